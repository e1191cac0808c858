using BlockMirror.Block.Drivers;
using BlockMirror.Block.Interop;
using BlockMirror.Block.Graph;
using BlockMirror.Cli.Tools;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// What <c>blockmirror mirror</c> does with TARGET, decided (and refused) before anything is created or
/// written: its format, whether the command creates it, the backing file a new one names, and the sync mode
/// the job really runs.
/// </summary>
/// <param name="Path">TARGET as given.</param>
/// <param name="Exists">TARGET existed before the command: it is never removed. Always so for an image that is not a local file (an NBD export).</param>
/// <param name="Format">The target's format (given, probed, or chosen for a new file); null for an export to be probed when it opens.</param>
/// <param name="OpenFormat">The format to open it with: null for an existing target without <c>-O</c>, so that it is probed (and, if raw, guarded) at open.</param>
/// <param name="Sync">The job's sync mode: <c>top</c> over a source without a backing file is <c>full</c>.</param>
/// <param name="BackingFile">The absolute backing file name a new target's header gets, or null.</param>
/// <param name="BackingFormat">That backing file's format.</param>
sealed record MirrorTarget(string Path, bool Exists, string? Format, string? OpenFormat, MirrorSyncMode Sync, string? BackingFile, string? BackingFormat)
{
    /// <summary>
    /// An image that is not a local file: an NBD export. It exists (the command never creates, truncates or
    /// removes it), its format is probed through it when it opens, and its own checks come once it is open.
    /// </summary>
    public bool Remote => ImageFiles.LocalFile(Path) is null;

    /// <summary>An existing target opened without <c>-O</c> that probed as raw: QEMU restricts (and warns about) writes to its first block.</summary>
    public bool ProbedRaw(BlockNode opened) => OpenFormat is null && opened.Driver.DriverName == DriverNames.Raw;

    /// <summary>
    /// QEMU's warning for a writable raw image whose format was probed, printed so that the user knows why a
    /// write that would put an image header into its first block fails.
    /// </summary>
    public string ProbeWarning =>
        $"WARNING: Image format was not specified for '{Path}' and probing guessed raw. Automatically detecting the format is dangerous for raw images, " +
        "write operations on block 0 will be restricted. Specify the 'raw' format explicitly to remove the restrictions.";

    /// <summary>
    /// Decides what TARGET is, as drive-mirror does (QEMU's qmp_drive_mirror): with <c>--sync top</c> a new
    /// target is backed by the source's backing file, with <c>--sync none</c> by the source itself, so that
    /// it reads what the source reads. Refuses, before anything is created, a target that could not read so.
    /// </summary>
    public static async Task<MirrorTarget> PlanAsync(BlockNode source, string path, string? targetFormat, MirrorSyncMode sync, CancellationToken cancellationToken)
    {
        (sync, var backing) = NewTargetBacking.Choose(source, sync);
        if (ImageFiles.LocalFile(path) is not { } file)
        {
            return new MirrorTarget(path, Exists: true, targetFormat, targetFormat, sync, null, null);
        }

        if (Directory.Exists(file))
        {
            throw new UsageException($"TARGET '{path}' is a directory");
        }

        // .NET's File.Exists is true of a symbolic link that names no file; such a target is new, made where it points.
        if (File.Exists(file) && FileStatus.KindOf(file) is not null)
        {
            var format = ImageTool.FormatOf(file, targetFormat)!;
            if (sync == MirrorSyncMode.Top)
            {
                await RequireOwnBackingAsync(path, format, source, cancellationToken);
            }

            return new MirrorTarget(path, Exists: true, format, targetFormat, sync, null, null);
        }

        var newFormat = targetFormat ?? FormatByExtension(path) ?? source.Driver.DriverName;
        if (backing is null)
        {
            return new MirrorTarget(path, Exists: false, newFormat, newFormat, sync, null, null);
        }

        var backingName = backing.Driver.FileName ?? throw new UsageException($"--sync {sync.ToWireName()}: the backing of '{source.Name}' has no file name to write into TARGET");
        if (newFormat == DriverNames.Raw)
        {
            throw new UsageException($"--sync {sync.ToWireName()}: TARGET '{path}' would be raw and would read zeroes where '{backingName}' has data, but " +
                "raw cannot name a backing file; use a qcow2 TARGET or --sync full");
        }

        return new MirrorTarget(path, Exists: false, newFormat, newFormat, sync, System.IO.Path.GetFullPath(backingName), backing.Driver.DriverName);
    }

    /// <summary>
    /// The format a new file's extension names (<c>.qcow2</c>, <c>.raw</c>), or null: other names
    /// (<c>.img</c> is used for qcow2 and raw alike) take the source's format.
    /// </summary>
    static string? FormatByExtension(string path) => System.IO.Path.GetExtension(path).ToLowerInvariant() switch
    {
        ".qcow2" => DriverNames.Qcow2,
        ".raw" => DriverNames.Raw,
        _ => null,
    };

    /// <summary>
    /// <c>--sync top</c> copies only what lies above the source's backing file, so an existing target must read
    /// the rest from a backing file of its own. Looked at read-only, so that a refusal leaves the file as it was.
    /// </summary>
    static async Task RequireOwnBackingAsync(string path, string format, BlockNode source, CancellationToken cancellationToken)
    {
        string? own = null;
        if (format != DriverNames.Raw)
        {
            await using var graph = new BlockGraph();
            var node = await ImageTool.OpenAsync(graph, path, format, readOnly: true, withBacking: false, cancellationToken);
            own = node.Driver.BackingFileName;
        }

        RequireOwnBacking(path, own, source);
    }

    /// <summary>The refusal of a <c>--sync top</c> TARGET whose header names no backing file (<paramref name="own"/> null).</summary>
    public static void RequireOwnBacking(string path, string? own, BlockNode source)
    {
        if (own is null)
        {
            throw new UsageException($"--sync top: TARGET '{path}' has no backing file, so it would read zeroes where " +
                $"'{source.Backing?.Driver.FileName}' has data; give it one (qemu-img rebase -u) or use --sync full");
        }
    }
}
