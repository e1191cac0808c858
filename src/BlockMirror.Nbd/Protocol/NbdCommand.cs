namespace BlockMirror.Nbd.Protocol;

/// <summary>Transmission-phase commands (NBD_CMD_*).</summary>
public enum NbdCommand : ushort
{
    Read = 0,
    Write = 1,
    Disconnect = 2,
    Flush = 3,
    Trim = 4,
    Cache = 5,
    WriteZeroes = 6,
    BlockStatus = 7,
    Resize = 8,
}

/// <summary>Command flags (NBD_CMD_FLAG_*).</summary>
[Flags]
public enum NbdCommandFlags : ushort
{
    None = 0,
    Fua = 1 << 0,
    NoHole = 1 << 1,
    DontFragment = 1 << 2,
    RequestOne = 1 << 3,
    FastZero = 1 << 4,
    PayloadLength = 1 << 5,
}

/// <summary>Structured reply chunk types (NBD_REPLY_TYPE_*).</summary>
public enum NbdChunkType : ushort
{
    None = 0,
    OffsetData = 1,
    OffsetHole = 2,
    BlockStatus = 5,
    Error = (1 << 15) | 1,
    ErrorOffset = (1 << 15) | 2,
}

/// <summary>Structured reply chunk flags.</summary>
[Flags]
public enum NbdChunkFlags : ushort
{
    None = 0,
    Done = 1 << 0,
}

/// <summary>The error values NBD carries in replies: Linux errno numbers, a fixed subset.</summary>
public enum NbdError : uint
{
    None = 0,
    EPERM = 1,
    EIO = 5,
    ENOMEM = 12,
    EINVAL = 22,
    ENOSPC = 28,
    EOVERFLOW = 75,
    ENOTSUP = 95,
    ESHUTDOWN = 108,
}

/// <summary>Status flags of the <c>base:allocation</c> meta context (NBD_STATE_*).</summary>
[Flags]
public enum NbdAllocationState : uint
{
    None = 0,
    Hole = 1 << 0,
    Zero = 1 << 1,
}

/// <summary>Status flags of QEMU's <c>qemu:dirty-bitmap:NAME</c> meta contexts: a range is dirty in the bitmap, or not.</summary>
[Flags]
public enum NbdDirtyState : uint
{
    Clean = 0,
    Dirty = 1 << 0,
}
