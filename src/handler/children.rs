//! The process groups `--exec` starts: the shell that starts each command in a group of
//! its own, the registry of the groups still running, the `GroupGuard` that kills a
//! group when its request or worker is done with it, and [`kill_children`], which kills
//! every registered group when the server exits, even without running destructors.
//!
//! Both [`super::Exec`] and [`super::ExecPool`] start their processes here, so that one
//! registry knows all of them.

use std::collections::BTreeMap;
use std::sync::{Mutex as StdMutex, MutexGuard, PoisonError};

use tokio::process::Command;

/// The shell that runs a command line (`sh -c` on unix, in a process group of its own;
/// `cmd /C` on Windows, given the line exactly as written), killed when its handle is
/// dropped.
pub(super) fn shell(command: &str) -> Command {
    #[cfg(unix)]
    let mut cmd = {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(command);
        // Its own process group, so that a timeout kills whatever it started too.
        cmd.process_group(0);
        cmd
    };
    #[cfg(windows)]
    let mut cmd = {
        // cmd.exe does not follow the quoting rules Command applies to arguments (a `"`
        // would reach it as `\"`), so the line goes to it exactly as written.
        let mut cmd = Command::new("cmd");
        cmd.arg("/C").raw_arg(command);
        cmd
    };
    cmd.kill_on_drop(true);
    cmd
}

/// The process groups courier started and that may still be running, so that exiting can
/// kill them ([`kill_children`]). A std mutex: it is held for a few map operations and a
/// signal, never across an await, and is taken from `Drop` and from a signal task about
/// to call `exit`.
static GROUPS: StdMutex<Groups> = StdMutex::new(Groups {
    next: 0,
    live: BTreeMap::new(),
    exiting: false,
});

/// What [`GROUPS`] holds.
#[derive(Debug)]
struct Groups {
    /// The key of the next group: pids are reused, keys are not, so a guard never
    /// removes another's entry.
    next: u64,
    /// Key to the pid of the group's leader (which is the group's id).
    live: BTreeMap<u64, u32>,
    /// Set by [`kill_children`]: the process is exiting, so a group registered after it
    /// is killed at once rather than left to outlive the server.
    exiting: bool,
}

/// The registry, locked.
fn groups() -> MutexGuard<'static, Groups> {
    // The map stays consistent even if a holder panicked: every change is one call.
    GROUPS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Kills every process group that courier started for `--exec` and that is still
/// registered: commands running for a request, with whatever they started, and the
/// processes of every worker pool. Meant for the moment the server exits, when the
/// handlers' own clean-up (which runs on drop) may not run, as with
/// [`std::process::exit`]: from then on a command that starts is killed at once, and
/// worker pools stop replacing their workers.
///
/// On unix each group gets SIGKILL. On Windows every process in courier's job object is
/// ended (`windows_job.rs`; Windows would end them anyway when the server exits).
pub fn kill_children() {
    let mut groups = groups();
    groups.exiting = true;
    for pid in std::mem::take(&mut groups.live).into_values() {
        kill_group(pid);
    }
    #[cfg(windows)]
    super::windows_job::kill_all();
}

/// Whether [`kill_children`] has run: the process is on its way out.
pub(super) fn exiting() -> bool {
    groups().exiting
}

/// Sends SIGKILL to the process group `pid` leads; it may already be gone.
fn kill_group(pid: u32) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(pid) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        // The group may already be gone; nothing to do then.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    #[cfg(not(unix))]
    let _ = pid;
}

/// Kills a child's whole process group when dropped (unless disarmed), so that a request
/// that times out or whose client leaves does not leave processes behind. While armed the
/// group is in the registry that [`kill_children`] empties.
#[derive(Debug)]
pub(super) struct GroupGuard {
    /// The registry key and the group's id, while armed.
    armed: Option<(u64, u32)>,
}

impl GroupGuard {
    /// Guards the group led by `child`, started by [`shell`] (so in a group of its own),
    /// and on Windows puts it in the job that ends with the server. If the server is
    /// already exiting, kills it at once instead.
    pub(super) fn arm(child: &tokio::process::Child) -> GroupGuard {
        #[cfg(windows)]
        super::windows_job::adopt(child);
        let Some(pid) = child.id() else {
            return GroupGuard { armed: None };
        };
        let mut groups = groups();
        if groups.exiting {
            kill_group(pid);
            return GroupGuard { armed: None };
        }
        let key = groups.next;
        groups.next += 1;
        groups.live.insert(key, pid);
        GroupGuard {
            armed: Some((key, pid)),
        }
    }

    /// Leaves the group alone from now on (the command ended normally).
    pub(super) fn disarm(&mut self) {
        if let Some((key, _)) = self.armed.take() {
            groups().live.remove(&key);
        }
    }

    /// Kills the group now, unless [`kill_children`] already has.
    pub(super) fn kill(&mut self) {
        if let Some((key, pid)) = self.armed.take() {
            // Under the lock, so that this and kill_children never both signal a group
            // whose id may have been given to a new one in between.
            let mut groups = groups();
            if groups.live.remove(&key).is_some() {
                kill_group(pid);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
