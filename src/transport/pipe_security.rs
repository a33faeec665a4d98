//! Windows named pipes made as private as a Unix socket with mode 0600: each pipe instance
//! is created with a security descriptor that lets only its owner (the user the server
//! runs as) and the system connect, remote clients are rejected, and the first instance
//! claims the name so that no other process can squat on it. Also the connected client's
//! process id, for the logs.
//!
//! This is the crate's only `unsafe` code: the Windows calls that build a security
//! descriptor and read a pipe's client process id have no safe wrapper in tokio or std.

#![allow(unsafe_code)]

use std::io;
use std::os::windows::io::AsRawHandle;
use std::ptr::null_mut;

use tokio::net::windows::named_pipe::{NamedPipeServer, ServerOptions};
use windows_sys::Win32::Foundation::LocalFree;
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};
use windows_sys::Win32::System::Pipes::GetNamedPipeClientProcessId;

/// The pipe's access rules in SDDL: a protected DACL (nothing inherited) granting all
/// access to the object's owner (`OW`, the user that created the pipe) and to the local
/// system (`SY`), and nothing to anyone else.
const OWNER_ONLY: &str = "D:P(A;;GA;;;OW)(A;;GA;;;SY)";

/// Creates an instance of the pipe at `path` that only its owner may connect to; `first`
/// makes creation fail if any instance of that name already exists.
///
/// # Errors
/// When the security descriptor cannot be built or the instance cannot be created.
pub(super) fn create_instance(path: &str, first: bool) -> io::Result<NamedPipeServer> {
    let sddl: Vec<u16> = OWNER_ONLY.encode_utf16().chain(Some(0)).collect();
    let mut descriptor: PSECURITY_DESCRIPTOR = null_mut();
    // SAFETY: `sddl` is NUL-terminated UTF-16 that lives across the call; `descriptor`
    // receives a LocalAlloc'ed descriptor, freed below; the size out-pointer may be null.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut descriptor,
            null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut attributes = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: descriptor,
        bInheritHandle: 0,
    };
    let mut options = ServerOptions::new();
    options
        .first_pipe_instance(first)
        .reject_remote_clients(true);
    // SAFETY: `attributes` is a valid SECURITY_ATTRIBUTES whose descriptor stays alive
    // until after the call; the system copies it into the pipe object.
    let created = unsafe {
        options.create_with_security_attributes_raw(
            path,
            (&mut attributes as *mut SECURITY_ATTRIBUTES).cast(),
        )
    };
    // SAFETY: `descriptor` came from LocalAlloc (by the conversion above), and nothing
    // uses it any more.
    unsafe { LocalFree(descriptor) };
    created
}

/// The process id of the client connected to `pipe`, if Windows can tell.
pub(crate) fn client_process_id(pipe: &NamedPipeServer) -> Option<u32> {
    let mut pid = 0u32;
    // SAFETY: the handle belongs to `pipe`, which is alive for the call; `pid` is a valid
    // out-pointer.
    let ok = unsafe { GetNamedPipeClientProcessId(pipe.as_raw_handle(), &mut pid) };
    (ok != 0).then_some(pid)
}
