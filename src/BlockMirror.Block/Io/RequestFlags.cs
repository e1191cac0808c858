namespace BlockMirror.Block.Io;

/// <summary>Per-request flags, with QEMU's meanings (BDRV_REQ_*).</summary>
[Flags]
public enum RequestFlags
{
    None = 0,

    /// <summary>Force unit access: the data is on stable storage when the request completes.</summary>
    Fua = 1 << 0,

    /// <summary>Write-zeroes may deallocate the range instead of writing zeroes, as long as it reads back as zeroes.</summary>
    MayUnmap = 1 << 1,

    /// <summary>
    /// Write-zeroes must be fast: fail with <see cref="BlockErrno.ENOTSUP"/> instead of falling back to
    /// writing zero buffers (QEMU's BDRV_REQ_NO_FALLBACK, NBD's FAST_ZERO).
    /// </summary>
    NoFallback = 1 << 2,
}
