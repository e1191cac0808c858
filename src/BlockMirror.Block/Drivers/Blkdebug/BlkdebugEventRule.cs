using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Blkdebug;

/// <summary>
/// QEMU's <c>inject-error</c> rule. When <paramref name="Event"/> fires in <paramref name="State"/> (0: any
/// state), the rule becomes active, replacing the rules other events armed before; an active rule fails the
/// next requests of the operations in <paramref name="IoTypes"/> that cover <paramref name="Offset"/>.
/// </summary>
/// <param name="IoTypes">Bit per <see cref="BlockOperation"/>; QEMU's default is every data operation and flush, not block-status.</param>
/// <param name="Errno">The error; 0 makes an armed rule let matching requests through (and hide the rules after it).</param>
/// <param name="Offset">The byte a request must cover (QEMU's <c>sector</c> × 512), -1 for any request.</param>
/// <param name="Once">Fire once, then the rule is gone for good.</param>
/// <param name="Immediately">Fail in the request's own call instead of after one turn of the scheduler.</param>
public sealed record BlkdebugInjectError(
    BlkdebugEvent Event,
    int State = 0,
    int IoTypes = BlkdebugInjectError.DefaultIoTypes,
    int Errno = (int)BlockErrno.EIO,
    long Offset = -1,
    bool Once = false,
    bool Immediately = false)
{
    public const int DefaultIoTypes =
        1 << (int)BlockOperation.Read | 1 << (int)BlockOperation.Write | 1 << (int)BlockOperation.WriteZeroes |
        1 << (int)BlockOperation.Discard | 1 << (int)BlockOperation.Flush;

    /// <summary>The operations blkdebug's <c>iotype</c> can name (truncate is not one).</summary>
    public static bool IsIoType(BlockOperation operation) => operation != BlockOperation.Truncate;

    /// <summary>An armed rule's verdict on a request: QEMU compares the rule's byte with the request, and a flush has no bytes.</summary>
    public bool Covers(BlockOperation operation, long offset, long length) =>
        (IoTypes & (1 << (int)operation)) != 0 && (Offset == -1 || (length > 0 && Offset >= offset && Offset - offset < length));
}

/// <summary>QEMU's <c>set-state</c> rule: when <paramref name="Event"/> fires in <paramref name="State"/> (0: any), the state becomes <paramref name="NewState"/>.</summary>
public sealed record BlkdebugSetState(BlkdebugEvent Event, int State, int NewState);
