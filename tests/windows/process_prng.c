/* bcryptprimitives.dll for Wine 8, which lacks it: Rust's standard library on Windows
 * asks ProcessPrng for random bytes (hash map seeds, for one). This one forwards to
 * RtlGenRandom (advapi32's SystemFunction036), which Wine has. Built with mingw by
 * tests/windows/run and copied into the Wine prefix's system32; never shipped. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
