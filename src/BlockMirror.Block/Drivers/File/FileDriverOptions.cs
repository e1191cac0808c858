namespace BlockMirror.Block.Drivers.File;

/// <summary>What the file driver does with discard requests (QEMU's <c>discard</c> option).</summary>
public enum FileDiscardMode
{
    /// <summary>Discards are accepted and ignored; write-zeroes never deallocates (QEMU's default).</summary>
    Ignore,

    /// <summary>Discards punch holes; write-zeroes with may-unmap punches holes too.</summary>
    Unmap,
}

/// <summary>Options of the <c>file</c> protocol driver, as QEMU names them.</summary>
/// <param name="Filename">Path of a regular file.</param>
/// <param name="Direct"><c>cache.direct</c>: open with O_DIRECT, bypassing the page cache.</param>
/// <param name="Aio">
/// <c>aio</c>, or null when not given (<see cref="DefaultAio"/>): <c>threads</c> (<see cref="FileIoThreads"/>), <c>io_uring</c> (<see cref="IoUring.FileIoUring"/>, or the
/// threads with a warning where the kernel refuses io_uring) or <c>native</c>. QEMU's native is Linux AIO, which
/// this driver does not implement: it is accepted (with QEMU's requirement of <c>cache.direct=on</c>) and served by the threads.
/// </param>
/// <param name="Discard">What discard requests do.</param>
/// <param name="Locking">QEMU's <c>locking</c>: whether the node takes and honours QEMU's image locks (<see cref="FileLocks"/>).</param>
public sealed record FileDriverOptions(string Filename, bool Direct = false, string? Aio = null, FileDiscardMode Discard = FileDiscardMode.Ignore,
    FileLockingMode Locking = FileLockingMode.Auto)
{
    public static readonly IReadOnlyList<string> AioModes = ["threads", "native", "io_uring"];

    /// <summary>Names the engine for file nodes that do not say (commands such as <c>mirror</c> have no aio option).</summary>
    public const string AioVariable = "BLOCKMIRROR_AIO";

    /// <summary>The threads' name, the default where nothing else is asked for.</summary>
    const string BuiltInDefault = "threads";

    /// <summary>
    /// The engine of a node opened without <c>aio</c>: <see cref="AioVariable"/> (<c>threads</c> or
    /// <c>io_uring</c>) when set, else <c>threads</c>.
    /// </summary>
    public static string DefaultAio =>
        Environment.GetEnvironmentVariable(AioVariable) switch
        {
            null or "" => BuiltInDefault,
            "threads" => "threads",
            "io_uring" => "io_uring",
            var value => throw new BlockOpenException($"{AioVariable}: unknown value '{value}' (expected threads or io_uring)"),
        };
}
