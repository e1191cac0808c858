using System.Text.Json;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Qapi;
using BlockMirror.Jobs.Create;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Commands;

/// <summary>
/// blockdev-create (QEMU 7.2's block/create.c) for <c>driver=file</c> and <c>driver=qcow2</c>: the options are
/// read as QAPI reads them (a refusal there changes nothing and starts no job), then a job of type
/// <c>create</c> checks them as the driver does, in its order and words, and creates the image; its error, if
/// any, is read with query-jobs until job-dismiss. What QEMU can create and this program cannot (encryption,
/// external data files, extended L2 entries, zstd, other formats) is refused with a message that says so.
/// </summary>
public sealed partial class StorageDaemon
{
    static readonly QapiEnum PreallocMode = new("PreallocMode", PreallocationModes.Names);

    /// <summary>
    /// BlockdevCreateOptions (QEMU 7.2) with the variants this program creates. Its <c>driver</c> is blockdev-add's
    /// BlockdevDriver, so QEMU's other formats are refused by name; qcow2's <c>encrypt</c> is not declared, so it is
    /// refused as unexpected. Members declared here and not supported (a data file, extended L2 entries, zstd)
    /// are refused by the job, where QEMU checks them, when QEMU would accept them.
    /// </summary>
    static readonly QapiObject BlockdevCreateOptions = QapiObject.Union("BlockdevCreateOptions", [("driver", BlockdevSchema.Driver)], "driver",
        new QapiVariant(DriverNames.File, new QapiObject("BlockdevCreateOptionsFile",
            ("filename", QapiBuiltin.Str), ("size", QapiBuiltin.Size), ("*preallocation", PreallocMode), ("*nocow", QapiBuiltin.Bool),
            ("*extent-size-hint", QapiBuiltin.Size))),
        new QapiVariant(DriverNames.Qcow2, new QapiObject("BlockdevCreateOptionsQcow2",
            ("file", BlockdevSchema.Ref), ("*data-file", BlockdevSchema.Ref), ("*data-file-raw", QapiBuiltin.Bool),
            ("*extended-l2", QapiBuiltin.Bool), ("size", QapiBuiltin.Size), ("*version", new QapiEnum("BlockdevQcow2Version", ["v2", "v3"])),
            ("*backing-file", QapiBuiltin.Str), ("*backing-fmt", BlockdevSchema.Driver), ("*cluster-size", QapiBuiltin.Size),
            ("*preallocation", PreallocMode), ("*lazy-refcounts", QapiBuiltin.Bool), ("*refcount-bits", QapiBuiltin.Int),
            ("*compression-type", new QapiEnum("Qcow2CompressionType", ["zlib", "zstd"])))));

    static readonly QapiObject BlockdevCreateArguments = new("q_obj_blockdev-create-arg", ("job-id", QapiBuiltin.Str), ("options", BlockdevCreateOptions));

    /// <summary>QEMU's BDRV_MAX_LENGTH, as blockdev-create prints it.</summary>
    const ulong MaxImageLength = (ulong)MaxRequestOffset;

    void AddBlockdevCreateCommand()
    {
        Commands.Add("blockdev-create", BlockdevCreateArguments, (arguments, _) =>
        {
            var jobId = arguments.RequireString("job-id");
            var options = arguments.OptionalObject("options")!;
            Func<CancellationToken, Task>? create = options.RequireString("driver") switch
            {
                DriverNames.File => ReadFileCreate(options),
                DriverNames.Qcow2 => ReadQcow2Create(options),
                _ => null,
            };
            options.CheckNoneUnexpected();
            arguments.CheckNoneUnexpected();

            // A driver with no creation options (raw, nbd, the filters), as QEMU says of them.
            CreateJob.Start(Jobs, jobId, create ?? throw QmpException.Generic("Driver does not support blockdev-create"));
            return ValueTask.FromResult(Empty);
        });
    }

    /// <summary>A required size: the declaration has checked it is there.</summary>
    static ulong RequireSize(QmpArguments options, string name) => options.OptionalUInt64(name)!.Value;

    /// <summary>BlockdevCreateOptionsFile, read; the creation is QEMU's raw_co_create.</summary>
    Func<CancellationToken, Task> ReadFileCreate(QmpArguments options)
    {
        var file = new FileCreateOptions
        {
            FileName = options.RequireString("filename"),
            Size = RequireSize(options, "size"),
            Preallocation = options.OptionalString("preallocation") is { } mode ? PreallocationModes.Parse(mode) : PreallocationMode.Off,
            NoCow = options.OptionalBool("nocow") ?? false,
            ExtentSizeHint = options.OptionalUInt64("extent-size-hint"),
        };
        return _ =>
        {
            FileCreate.Create(file, Graph);
            return Task.CompletedTask;
        };
    }

    /// <summary>BlockdevCreateOptionsQcow2, read (the declaration checked it); the job checks it as QEMU's qcow2_co_create does.</summary>
    Func<CancellationToken, Task> ReadQcow2Create(QmpArguments options)
    {
        var request = new Qcow2Request
        {
            File = options.OptionalRaw("file")!.Value.Clone(),
            DataFile = options.OptionalRaw("data-file") is not null,
            DataFileRaw = options.OptionalBool("data-file-raw") ?? false,
            ExtendedL2 = options.OptionalBool("extended-l2") ?? false,
            Size = RequireSize(options, "size"),
            Version = options.OptionalString("version") == "v2" ? 2 : 3,
            BackingFile = options.OptionalString("backing-file"),
            BackingFormat = options.OptionalString("backing-fmt"),
            ClusterSize = options.OptionalUInt64("cluster-size") ?? 65536,
            Preallocation = options.OptionalString("preallocation") is { } mode ? PreallocationModes.Parse(mode) : PreallocationMode.Off,
            LazyRefcounts = options.OptionalBool("lazy-refcounts") ?? false,
            RefcountBits = options.OptionalInt("refcount-bits") ?? 16,
            CompressionType = options.OptionalString("compression-type") ?? "zlib",
        };
        return cancellationToken => CreateQcow2Async(request, cancellationToken);
    }

    /// <summary>The qcow2 options as blockdev-create gives them, before any check.</summary>
    sealed record Qcow2Request
    {
        public required JsonElement File { get; init; }
        public bool DataFile { get; init; }
        public bool DataFileRaw { get; init; }
        public bool ExtendedL2 { get; init; }
        public ulong Size { get; init; }
        public int Version { get; init; }
        public string? BackingFile { get; init; }
        public string? BackingFormat { get; init; }
        public ulong ClusterSize { get; init; }
        public PreallocationMode Preallocation { get; init; }
        public bool LazyRefcounts { get; init; }
        public long RefcountBits { get; init; }
        public string CompressionType { get; init; } = "zlib";
    }

    /// <summary>QEMU's qcow2_co_create: the file node first, then every option in its order, then the image.</summary>
    async Task CreateQcow2Async(Qcow2Request request, CancellationToken cancellationToken)
    {
        var parent = new RootParent("blockdev-create");
        NodeEdge? holder = null;
        BlockNode node;
        if (request.File.ValueKind == JsonValueKind.String)
        {
            var name = request.File.GetString()!;
            node = Graph.FindNode(name) ?? throw new IOException($"Cannot find device='{name}' nor node-name='{name}'");
        }
        else
        {
            // Inline options open a node for this creation only: it closes when the holder lets go of it.
            node = await DriverRegistry.OpenAsync(Graph, new OptionReader(request.File), new OpenRules(), cancellationToken).ConfigureAwait(false);
            holder = Graph.AttachRoot(node, parent, "root", BlockPermissions.None, BlockPermissions.All);
        }

        try
        {
            var options = CheckQcow2(request);
            if (node.ReadOnly)
            {
                throw new IOException("Block node is read-only");
            }

            var edge = Graph.AttachRoot(node, parent, "root", BlockPermissions.Write | BlockPermissions.Resize, BlockPermissions.All);
            try
            {
                await Qcow2Create.WriteAsync(edge, options, request.Preallocation, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                await Graph.DetachRootAsync(edge).ConfigureAwait(false);
            }
        }
        finally
        {
            if (holder is not null)
            {
                await Graph.DetachRootAsync(holder).ConfigureAwait(false);
            }
        }
    }

    /// <summary>qcow2_co_create's checks in its order and words; then what this program cannot create.</summary>
    static Qcow2CreateOptions CheckQcow2(Qcow2Request r)
    {
        const string UseV3 = "(use version=v3 or greater)";
        string? problem = r switch
        {
            _ when r.Size % 512 != 0 => "Image size must be a multiple of 512 bytes",
            { ExtendedL2: true, Version: < 3 } => $"Extended L2 entries are only supported with compatibility level 1.1 and above {UseV3}",
            _ when r.ClusterSize is < 512 or > 2 << 20 || !ulong.IsPow2(r.ClusterSize) => "Cluster size must be a power of two between 512 and 2048k",
            { ExtendedL2: true } => "qcow2: extended L2 entries ('extended-l2') are not supported",
            { BackingFile: not null, Preallocation: not PreallocationMode.Off } =>
                "Backing file and preallocation can only be used at the same time if extended_l2 is on",
            { BackingFormat: not null, BackingFile: null } => "Backing format cannot be used without backing file",
            { LazyRefcounts: true, Version: < 3 } => $"Lazy refcounts only supported with compatibility level 1.1 and above {UseV3}",
            _ when r.RefcountBits is < 1 or > 64 || !long.IsPow2(r.RefcountBits) => "Refcount width must be a power of two and may not exceed 64 bits",
            { Version: < 3 } when r.RefcountBits != 16 => $"Different refcount widths than 16 bits require compatibility level 1.1 or above {UseV3}",
            { DataFileRaw: true, DataFile: false } => "data-file-raw requires data-file",
            { DataFileRaw: true, BackingFile: not null } => "Backing file and data-file-raw cannot be used at the same time",
            { DataFile: true, Version: < 3 } => $"External data files are only supported with compatibility level 1.1 and above {UseV3}",
            { DataFile: true } => "qcow2: an external data file ('data-file') is not supported",
            { Version: < 3 } when r.CompressionType != "zlib" => $"Non-zlib compression type is only supported with compatibility level 1.1 and above {UseV3}",
            _ when r.CompressionType != "zlib" => $"qcow2: compression type '{r.CompressionType}' is not supported",
            // QEMU resizes the new image only after writing its header; here nothing has been written yet.
            _ when r.Size > long.MaxValue => "Could not resize image: Image size cannot be negative",
            _ when r.Size > MaxImageLength => $"Could not resize image: offset({r.Size}) exceeds maximum({MaxImageLength})",
            _ when !Qcow2Create.FitsL1Table((long)r.Size, (int)r.ClusterSize) => "Could not resize image: Failed to grow the L1 table: File too large",
            _ => null,
        };
        if (problem is not null)
        {
            throw new IOException(problem);
        }

        var options = new Qcow2CreateOptions
        {
            Size = (long)r.Size,
            ClusterSize = (int)r.ClusterSize,
            Version = r.Version,
            BackingFile = r.BackingFile,
            BackingFormat = r.BackingFormat,
            LazyRefcounts = r.LazyRefcounts,
            RefcountBits = (int)r.RefcountBits,
        };

        // A backing file name too long for the header, which QEMU finds after it has written the image.
        return Qcow2Create.Validate(options) is { } late ? throw new IOException(late) : options;
    }
}
