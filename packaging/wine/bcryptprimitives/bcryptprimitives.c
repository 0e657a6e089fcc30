/*
 * A stand-in bcryptprimitives.dll for running muster-agent.exe under Wine 8
 * (Debian 12), whose bcryptprimitives.dll lacks ProcessPrng. Rust's standard
 * library (1.78+) gets its randomness (HashMap keys, rand's OsRng) from
 * ProcessPrng on Windows, so the .exe does not start without it.
 *
 * Test use only: real Windows 10/11 have ProcessPrng. It fills the buffer from
 * RtlGenRandom (advapi32's SystemFunction036), the OS CSPRNG Wine implements.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE inst, DWORD reason, LPVOID reserved)
{
    (void)inst;
    (void)reason;
    (void)reserved;
    return TRUE;
}
