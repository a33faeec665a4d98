//! A lossy datagram relay for tests: it sits between one UDP client and a server and, for
//! each datagram in either direction, drops it, sends it twice, or holds it back so that
//! later ones overtake it, each with the probability asked. The choices come from a
//! seeded generator, so a failing run names its seed and can be replayed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

/// What the relay does to datagrams, in percent.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub loss: u32,
    pub duplicate: u32,
    pub reorder: u32,
    pub seed: u64,
}

/// How long a reordered datagram is held back: long enough for the next ones to pass.
const HOLD: Duration = Duration::from_millis(3);

/// Starts a relay to `server`; returns the address clients send to. It runs until the
/// runtime ends.
pub async fn start(server: SocketAddr, faults: Faults) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(server).await.unwrap();
    let addr = front.local_addr().unwrap();
    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(faults.seed)));
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    {
        let (front, back, rng, client) = (front.clone(), back.clone(), rng.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0; 65_536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                forward(&back, None, buf[..n].to_vec(), faults, &rng);
            }
        });
    }
    tokio::spawn(async move {
        let mut buf = vec![0; 65_536];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *client.lock().unwrap();
            if let Some(to) = to {
                forward(&front, Some(to), buf[..n].to_vec(), faults, &rng);
            }
        }
    });
    addr
}

/// Sends one datagram on `socket` (to `to`, or its connected peer), faults applied.
fn forward(
    socket: &Arc<UdpSocket>,
    to: Option<SocketAddr>,
    bytes: Vec<u8>,
    faults: Faults,
    rng: &Mutex<fastrand::Rng>,
) {
    let (lose, twice, hold) = {
        let mut rng = rng.lock().unwrap();
        (
            rng.u32(0..100) < faults.loss,
            rng.u32(0..100) < faults.duplicate,
            rng.u32(0..100) < faults.reorder,
        )
    };
    if lose {
        return;
    }
    let socket = socket.clone();
    let send = async move {
        if hold {
            tokio::time::sleep(HOLD).await;
        }
        for _ in 0..if twice { 2 } else { 1 } {
            let _ = match to {
                Some(to) => socket.send_to(&bytes, to).await,
                None => socket.send(&bytes).await,
            };
        }
    };
    tokio::spawn(send);
}
