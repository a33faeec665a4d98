//! Windows has no process groups, so every process `--exec` starts joins one job object
//! instead, created to kill its members when its last handle closes. The server holds
//! that handle for its whole life, so when the server ends, by any path (a second Ctrl-C's
//! `exit`, a crash, being killed), Windows ends every command and worker it started,
//! with whatever they started in turn. [`kill_all`] ends them at once.
//!
//! Windows-only `unsafe`: tokio and std have no job objects.

#![allow(unsafe_code)]

use std::ptr::null;
use std::sync::OnceLock;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
    SetInformationJobObject, TerminateJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};

/// The job's handle, never closed (closing it is what kills the members).
struct Job(HANDLE);

// SAFETY: a job handle may be used from any thread; it is only read after creation.
unsafe impl Send for Job {}
// SAFETY: as above; the calls that take it are thread-safe.
unsafe impl Sync for Job {}

static JOB: OnceLock<Option<Job>> = OnceLock::new();

/// The job, created on first use; `None` if Windows refused (then nothing is adopted and
/// commands are killed only through their own handles).
fn job() -> Option<HANDLE> {
    JOB.get_or_init(|| {
        // SAFETY: null attributes and name ask for an unnamed job with default security.
        let handle = unsafe { CreateJobObjectW(null(), null()) };
        if handle.is_null() {
            return None;
        }
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        // SAFETY: `info` is the struct this information class expects, of the size given.
        let ok = unsafe {
            SetInformationJobObject(
                handle,
                JobObjectExtendedLimitInformation,
                (&info as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        };
        (ok != 0).then_some(Job(handle))
    })
    .as_ref()
    .map(|job| job.0)
}

/// Puts a just-started child in the job. Processes it starts from then on are in the job
/// too (a process it started in the instant before is not).
pub(super) fn adopt(child: &tokio::process::Child) {
    let (Some(job), Some(process)) = (job(), child.raw_handle()) else {
        return;
    };
    // SAFETY: both handles are valid: the job's for the process's life, the child's
    // while `child` is borrowed.
    let _ = unsafe { AssignProcessToJobObject(job, process.cast()) };
}

/// Ends every process in the job now.
pub(super) fn kill_all() {
    if let Some(job) = job() {
        // SAFETY: the job handle is valid for the process's life.
        let _ = unsafe { TerminateJobObject(job, 1) };
    }
}
