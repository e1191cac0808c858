using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace BlockMirror.Block.Interop;

/// <summary>
/// Lets one thread sleep until another wakes it, on a bare futex (as QEMU's QemuEvent does): a wake is
/// one system call, and one only when the thread is asleep; the woken thread runs at once.
/// </summary>
/// <remarks>
/// <para>Why not Monitor.Wait/Pulse (or SemaphoreSlim, ManualResetEventSlim, which wait on a monitor):
/// on Linux a monitor wakes its waiter through a condition variable while the waker still holds the
/// mutex, so the woken thread goes straight back to sleep on that mutex and needs a second wake (strace
/// shows FUTEX_WAIT on the mutex right after every wake). On a 2-core host each extra wake-up is a
/// context switch the request waits for.</para>
/// <para>One sleeper per parker; any number of wakers. A wake that comes before the sleep is kept: the
/// next <see cref="Park"/> returns at once.</para>
/// </remarks>
sealed unsafe class Parker
{
    const int Empty = 0;
    const int Woken = 1;
    const int Sleeping = 2;

    // A futex needs an address the GC does not move: a pinned array on the pinned object heap.
    readonly int[] _word = GC.AllocateArray<int>(1, pinned: true);

    int* Word => (int*)Unsafe.AsPointer(ref _word[0]);

    /// <summary>Wakes the sleeper, or makes its next <see cref="Park"/> return at once.</summary>
    public void Unpark()
    {
        if (Interlocked.Exchange(ref _word[0], Woken) == Sleeping)
        {
            LibC.Futex(LibC.SYS_futex, Word, LibC.FUTEX_WAKE_PRIVATE, 1, null, null, 0);
        }
    }

    /// <summary>Sleeps until <see cref="Unpark"/> (true) or until <paramref name="timeout"/> passes (false).</summary>
    public bool Park(TimeSpan timeout)
    {
        var deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (true)
        {
            var state = Volatile.Read(ref _word[0]);
            if (state == Woken)
            {
                Volatile.Write(ref _word[0], Empty);
                return true;
            }

            if (state == Empty && Interlocked.CompareExchange(ref _word[0], Sleeping, Empty) != Empty)
            {
                // A wake came in between: look again.
                continue;
            }

            var left = deadline - Environment.TickCount64;
            if (left <= 0)
            {
                // Give up sleeping, unless a wake arrived in the meantime.
                if (Interlocked.CompareExchange(ref _word[0], Empty, Sleeping) == Sleeping)
                {
                    return false;
                }

                continue;
            }

            var relative = new LibC.Timespec { Seconds = left / 1000, Nanoseconds = left % 1000 * 1_000_000 };

            // Returns at once (EAGAIN) if the word is no longer Sleeping; spurious returns are looked at again.
            LibC.Futex(LibC.SYS_futex, Word, LibC.FUTEX_WAIT_PRIVATE, Sleeping, &relative, null, 0);
        }
    }
}
