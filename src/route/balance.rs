//! Power of two choices: two candidates drawn at random, the one with fewer requests
//! outstanding wins. Per request, not per connection, so a slow backend, whose requests
//! pile up, is chosen less, and no backend is left idle while another queues (the
//! choice Envoy and linkerd made over least-connections and round robin).

/// The candidate to send the next request to, from the outstanding requests of each
/// eligible one; `None` when there is none. `random(n)` returns a number below `n`.
pub(crate) fn pick(loads: &[usize], mut random: impl FnMut(usize) -> usize) -> Option<usize> {
    match loads.len() {
        0 => None,
        1 => Some(0),
        n => {
            let first = random(n);
            // A second draw among the others, so the two always differ.
            let second = (first + 1 + random(n - 1)) % n;
            Some(if loads[second] < loads[first] {
                second
            } else {
                first
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn no_candidate_none_one_candidate_it() {
        assert_eq!(pick(&[], |_| 0), None);
        assert_eq!(pick(&[7], |_| 0), Some(0));
    }

    #[test]
    fn of_the_two_drawn_the_less_loaded_wins() {
        // Draws 0 then 0: candidates 0 and 1.
        assert_eq!(pick(&[5, 2, 0], |_| 0), Some(1));
        assert_eq!(pick(&[1, 2, 0], |_| 0), Some(0));
        // Draws 2 then 0: candidates 2 and 0.
        let mut draws = [2, 0].into_iter();
        assert_eq!(pick(&[1, 2, 0], |_| draws.next().unwrap()), Some(2));
    }

    #[test]
    fn the_two_drawn_always_differ() {
        for n in 2..6 {
            for a in 0..n {
                for b in 0..n - 1 {
                    let mut draws = [a, b].into_iter();
                    let mut seen = Vec::new();
                    let loads: Vec<usize> = (0..n).map(|_| 1).collect();
                    // Equal loads: the first drawn wins; record both through the closure.
                    let picked = pick(&loads, |bound| {
                        let draw = draws.next().unwrap();
                        assert!(draw < bound);
                        seen.push(draw);
                        draw
                    });
                    let second = (seen[0] + 1 + seen[1]) % n;
                    assert_ne!(seen[0], second, "n={n} a={a} b={b}");
                    assert_eq!(picked, Some(seen[0]));
                }
            }
        }
    }

    /// A simulation with random draws: a backend that holds each request 10 times as
    /// long as the other two (so its outstanding count grows 10 times as fast) gets far
    /// less than its third of the work.
    #[test]
    fn a_slow_backend_gets_less_than_half_its_fair_share() {
        let mut rng = fastrand::Rng::with_seed(7);
        let cost = [10u32, 1, 1];
        let mut outstanding = [0usize; 3];
        // Remaining time of every request in flight, per backend.
        let mut in_flight: [Vec<u32>; 3] = Default::default();
        let mut taken = [0u32; 3];
        for _ in 0..30_000 {
            // 16 requests in flight at all times: one new request per tick, and time
            // passes one tick.
            if in_flight.iter().map(Vec::len).sum::<usize>() < 16 {
                let chosen = pick(&outstanding, |n| rng.usize(..n)).unwrap();
                in_flight[chosen].push(cost[chosen]);
                outstanding[chosen] += 1;
                taken[chosen] += 1;
            }
            for (b, queue) in in_flight.iter_mut().enumerate() {
                queue.iter_mut().for_each(|left| *left -= 1);
                let before = queue.len();
                queue.retain(|left| *left > 0);
                outstanding[b] -= before - queue.len();
            }
        }
        let total: u32 = taken.iter().sum();
        let fair = total / 3;
        assert!(taken[0] < fair / 2, "slow got {} of {total}", taken[0]);
        assert!(taken[1] > fair && taken[2] > fair, "{taken:?}");
    }
}
