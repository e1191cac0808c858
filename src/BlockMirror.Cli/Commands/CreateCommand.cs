using System.CommandLine;
using System.Globalization;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Interop;
using BlockMirror.Block.Io;
using BlockMirror.Cli.Tools;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>blockmirror create -f qcow2|raw [-o OPTIONS] [-b BACKING] [-F BACKING_FMT] [-u] [-q] FILE [SIZE]</c>:
/// qemu-img create. Prints qemu-img's <c>Formatting 'FILE', fmt=...</c> line and writes a new empty image.
/// An existing FILE is replaced, as qemu-img replaces it; the new image is written beside it first and
/// renamed over it, so a refused or failed create leaves the old file as it was.
/// </summary>
static class CreateCommand
{
    /// <summary>The <c>-o</c> parameters, with what they take, for <c>-o help</c>.</summary>
    static readonly (string Name, string Help)[] Qcow2Parameters =
    [
        ("backing_file=<str>", "File name of a base image"),
        ("backing_fmt=<str>", "Image format of the base image (default: probed)"),
        ("cluster_size=<size>", "qcow2 cluster size, a power of two from 512 to 2M (default 64K)"),
        ("compat=<str>", "Compatibility level (v2 [0.10] or v3 [1.1], the default)"),
        ("compression_type=<str>", "Compression method: zlib"),
        ("extended_l2=<bool (on/off)>", "Extended L2 tables: off"),
        ("lazy_refcounts=<bool (on/off)>", "Postpone refcount updates"),
        ("preallocation=<str>", "Preallocation mode: off"),
        ("refcount_bits=<num>", "Width of a reference count entry in bits (default 16)"),
        ("size=<size>", "Virtual disk size"),
    ];

    static readonly (string Name, string Help)[] RawParameters =
    [
        ("preallocation=<str>", "Preallocation mode: off"),
        ("size=<size>", "Virtual disk size"),
    ];

    public static Command Create()
    {
        // Optional only so that '-o help' needs no file name, as with qemu-img.
        var file = new Argument<string?>("FILE") { Description = "Image file to create", Arity = ArgumentArity.ZeroOrOne };
        var size = new Argument<string?>("SIZE")
        {
            Description = "Virtual size, e.g. 10G (default: the backing file's)",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var format = new Option<string>("--format", "-f") { Description = "Image format: raw (default) or qcow2", DefaultValueFactory = _ => DriverNames.Raw };
        var options = new Option<string[]>("--options", "-o") { Description = "Format options, key=value,... ('-o help' lists them)" };
        var backing = new Option<string?>("--backing", "-b") { Description = "Backing file (qcow2); relative names are relative to FILE's directory" };
        var backingFormat = new Option<string?>("--backing-format", "-F") { Description = "Backing file format (default: probed from its content)" };
        var unsafeBacking = new Option<bool>("--unsafe", "-u") { Description = "Do not open the backing file (SIZE and -F are then needed)" };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "Do not print the Formatting line" };
        var command = new Command("create", "Create a new empty image (qemu-img create)")
        {
            file, size, format, options, backing, backingFormat, unsafeBacking, quiet,
        };
        command.SetAction((parse, cancellationToken) => CliErrors.RunToolAsync("create", 1, () =>
            RunAsync(new Request(parse.GetValue(file), parse.GetValue(size), parse.GetValue(format)!, parse.GetValue(options) ?? [],
                parse.GetValue(backing), parse.GetValue(backingFormat), parse.GetValue(unsafeBacking), parse.GetValue(quiet)), cancellationToken)));
        return command;
    }

    sealed record Request(string? FileOrNull, string? Size, string Format, string[] Options, string? Backing, string? BackingFormat, bool Unsafe, bool Quiet)
    {
        public string File => FileOrNull ?? throw new UsageException("Expecting image file name");
    }

    static async Task<int> RunAsync(Request request, CancellationToken cancellationToken)
    {
        if (!ImageFiles.Formats.Contains(request.Format))
        {
            throw new UsageException($"Unknown file format '{request.Format}' (supported: {string.Join(", ", ImageFiles.Formats)})");
        }

        var options = CreateOptionList.Parse(request.Options);
        if (request.Backing is not null)
        {
            CreateOptionList.Set(options, "backing_file", request.Backing);
        }

        if (request.BackingFormat is not null)
        {
            CreateOptionList.Set(options, "backing_fmt", request.BackingFormat);
        }

        if (options.Any(o => o.Key is "help" or "?"))
        {
            PrintHelp(request.Format);
            return 0;
        }

        if (ImageFiles.LocalFile(request.File) is null)
        {
            // An unknown prefix or a bad URI in QEMU's words. An NBD export is never created or formatted by
            // this command (qemu-img would clear its first sector, or write a qcow2 over its start).
            try
            {
                ImageFiles.CheckName(request.File);
            }
            catch (BlockOpenException ex)
            {
                throw new UsageException($"{request.File}: {ex.Message}");
            }

            throw new UsageException($"{request.File}: an image that is not a local file is not created here (an NBD export exists already)");
        }

        if (Directory.Exists(request.File))
        {
            throw new UsageException($"{request.File}: Is a directory");
        }

        return request.Format == DriverNames.Qcow2
            ? await CreateQcow2Async(request, options, cancellationToken)
            : CreateRaw(request, options);
    }

    static void PrintHelp(string format)
    {
        Console.WriteLine($"Supported {format} options:");
        foreach (var (name, help) in format == DriverNames.Qcow2 ? Qcow2Parameters : RawParameters)
        {
            Console.WriteLine($"  {name,-22} - {help}");
        }
    }

    static int CreateRaw(Request request, List<KeyValuePair<string, string>> options)
    {
        long? size = null;
        foreach (var (key, value) in options)
        {
            switch (key)
            {
                case "size":
                    size = ParseSize(value);
                    break;
                case "preallocation":
                    RequireValue(key, value, "off");
                    break;
                default:
                    throw new UsageException($"{request.File}: Invalid parameter '{key}'");
            }
        }

        if (request.Size is not null)
        {
            size = ParseSize(request.Size);
        }

        if (size is not { } given)
        {
            throw new UsageException($"{request.File}: Image creation needs a size parameter");
        }

        Announce(request, $"fmt=raw size={given}");
        Replace(request.File, DriverNames.Raw, temporary => ImageFiles.Create(temporary, DriverNames.Raw, RoundUpToSector(given)));
        return 0;
    }

    static async Task<int> CreateQcow2Async(Request request, List<KeyValuePair<string, string>> options, CancellationToken cancellationToken)
    {
        var create = new Qcow2CreateOptions { Size = -1 };
        foreach (var (key, value) in options)
        {
            create = key switch
            {
                "size" => create with { Size = ParseSize(value) },
                "backing_file" => create with { BackingFile = value.Length == 0 ? null : value },
                "backing_fmt" => create with { BackingFormat = value.Length == 0 ? null : value },
                "cluster_size" => create with { ClusterSize = ParseClusterSize(value) },
                "compat" => create with { Version = ParseCompat(value) },
                "lazy_refcounts" => create with { LazyRefcounts = ParseBool(key, value) },
                "refcount_bits" => create with { RefcountBits = ParseInt(key, value) },
                "extended_l2" => ParseBool(key, value) ? throw Unsupported(key, value) : create,
                "compression_type" => value == "zlib" ? create : throw Unsupported(key, value),
                "preallocation" => value == "off" ? create : throw Unsupported(key, value),
                "encryption" => ParseBool(key, value) ? throw Unsupported(key, value) : create,
                "data_file" or "data_file_raw" or "encrypt.format" or "encrypt.key-secret" or "encrypt.cipher-alg" or "encrypt.cipher-mode"
                    or "encrypt.ivgen-alg" or "encrypt.ivgen-hash-alg" or "encrypt.hash-alg" or "encrypt.iter-time" => throw Unsupported(key, value),
                _ => throw new UsageException($"{request.File}: Invalid parameter '{key}'"),
            };
        }

        if (request.Size is not null)
        {
            create = create with { Size = ParseSize(request.Size) };
        }

        if (create.BackingFile is { } backingFile)
        {
            create = await WithBackingAsync(request, create, backingFile, cancellationToken);
        }
        else if (create.BackingFormat is not null)
        {
            throw new UsageException($"{request.File}: backing_fmt is only valid with backing_file");
        }

        if (create.Size < 0)
        {
            throw new UsageException($"{request.File}: Image creation needs a size parameter");
        }

        // qemu-img prints the size as given and creates the image with it rounded up to whole sectors.
        Announce(request, create.Describe());
        create = create with { Size = RoundUpToSector(create.Size) };
        if (Qcow2Create.Validate(create) is { } problem)
        {
            throw new UsageException($"{request.File}: {problem}");
        }

        Replace(request.File, DriverNames.Qcow2, temporary => Qcow2Create.Create(temporary, create));
        return 0;
    }

    /// <summary>
    /// Opens the backing file as qemu-img does, by itself and read-only, to check it and to take its size
    /// when none was given; a missing backing format is probed and written into the new image.
    /// </summary>
    static async Task<Qcow2CreateOptions> WithBackingAsync(Request request, Qcow2CreateOptions create, string backingFile, CancellationToken cancellationToken)
    {
        var path = BackingPaths.Resolve(request.File, backingFile);
        if (Path.GetFullPath(path) == Path.GetFullPath(request.File) || FileStatus.AreSame(path, request.File) == true)
        {
            throw new UsageException($"{request.File}: Error: Trying to create an image with the same filename as the backing file");
        }

        if (create.BackingFormat is { } given && !ImageFiles.Formats.Contains(given))
        {
            throw new UsageException($"{request.File}: Unknown backing file format '{given}' (supported: {string.Join(", ", ImageFiles.Formats)})");
        }

        if (request.Unsafe)
        {
            if (create.BackingFormat is null)
            {
                if (!File.Exists(path))
                {
                    throw new UsageException($"{request.File}: with -u, a backing file that cannot be opened needs its format (-F)");
                }

                create = create with { BackingFormat = ImageFiles.Probe(path) };
            }

            return create;
        }

        await using var graph = new BlockGraph();
        BlockNode backing;
        try
        {
            backing = await ImageTool.OpenAsync(graph, path, create.BackingFormat, readOnly: true, withBacking: false, cancellationToken);
        }
        catch (BlockOpenException e)
        {
            throw new UsageException($"{request.File}: Could not open backing image '{backingFile}': {e.Message}");
        }

        return create with
        {
            BackingFormat = backing.Driver.DriverName,
            Size = create.Size < 0 ? backing.Length : create.Size,
        };
    }

    static void Announce(Request request, string description)
    {
        if (!request.Quiet)
        {
            Console.WriteLine($"Formatting '{request.File}', {description}");
            Console.Out.Flush();
        }
    }

    /// <summary>
    /// Writes the image beside FILE and renames it over FILE (<see cref="ImageReplacement"/>); errors name FILE
    /// first, as qemu-img's do.
    /// </summary>
    static void Replace(string file, string format, Action<string> create)
    {
        try
        {
            ImageReplacement.Replace(file, format, create);
        }
        catch (BlockGraphException ex)
        {
            // qemu-img's words: the file, then the lock it could not get.
            throw new BlockGraphException(ex.Kind, $"{file}: {ex.Message}") { Hint = ex.Hint };
        }
        catch (BlockOpenException ex)
        {
            throw new BlockOpenException($"{file}: {ex.Message}", ex.Errno, ex) { Hint = ex.Hint };
        }
    }

    static long RoundUpToSector(long size) => (size + 511) / 512 * 512;

    static long ParseSize(string text)
    {
        var size = ByteSize.Parse(text, "image size");
        // The largest size qemu-img accepts (INT64_MAX rounded down to whole sectors).
        return size <= long.MaxValue - 511 ? size : throw new FormatException($"invalid image size '{text}': too large");
    }

    static int ParseClusterSize(string text) =>
        ByteSize.TryParse(text, out var size) && size <= int.MaxValue
            ? (int)size
            : throw new UsageException($"Parameter 'cluster_size' expects a size, got '{text}'");

    static int ParseCompat(string text) => text switch
    {
        "0.10" or "v2" => 2,
        "1.1" or "v3" => 3,
        _ => throw new UsageException($"Parameter 'compat' does not accept value '{text}' (expected 0.10 or 1.1)"),
    };

    static bool ParseBool(string key, string text) => text switch
    {
        "on" or "yes" or "true" or "y" => true,
        "off" or "no" or "false" or "n" => false,
        _ => throw new UsageException($"Parameter '{key}' expects 'on' or 'off'"),
    };

    static int ParseInt(string key, string text) =>
        int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var value)
            ? value
            : throw new UsageException($"Parameter '{key}' expects a number, got '{text}'");

    static void RequireValue(string key, string value, string supported)
    {
        if (value != supported)
        {
            throw Unsupported(key, value);
        }
    }

    static UsageException Unsupported(string key, string value) =>
        new($"Parameter '{key}={value}' is not supported by blockmirror");
}
