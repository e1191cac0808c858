using System.CommandLine;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text.Json;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Block.Qapi;
using BlockMirror.Cli.Daemon;
using BlockMirror.Cli.Logging;
using BlockMirror.Cli.Memory;
using BlockMirror.Cli.Systemd;
using BlockMirror.Nbd;
using BlockMirror.Nbd.Server;
using BlockMirror.Qmp.Commands;
using BlockMirror.Qmp.Protocol;
using BlockMirror.Qmp.Server;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>blockmirror serve</c>: qemu-storage-daemon's command line. Options are applied in the order given, as
/// qemu-storage-daemon applies them, so an <c>--export</c> may name a node made by an earlier <c>--blockdev</c>.
/// Runs until SIGTERM, SIGINT or QMP <c>quit</c>, then cancels jobs, closes exports and flushes every image.
/// </summary>
static partial class ServeCommand
{
    /// <summary>Set in the child of <c>--daemonize</c>: it reports "ready" on stdout once it serves.</summary>
    const string DaemonChildVariable = "BLOCKMIRROR_DAEMON_CHILD";

    /// <summary>.NET's switch (read once, at the first socket operation) that runs socket completions on the socket engine's thread.</summary>
    const string InlineCompletionsVariable = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";

    internal static readonly string[] Known = ["--blockdev", "--chardev", "--monitor", "--nbd-server", "--export", "--object", "--pidfile", "--daemonize",
        MetricsListenOption, MetricsHistogramsOption, .. ServeLogging.Options];

    /// <summary>The options that take no value.</summary>
    static readonly string[] Flags = ["--daemonize", MetricsHistogramsOption];

    /// <summary>Ours, beyond qemu-storage-daemon: HOST:PORT of a Prometheus scrape endpoint (see ServeCommand.Metrics.cs).</summary>
    const string MetricsListenOption = "--metrics-listen";

    /// <summary>Ours: the exporters also record the request-duration histogram (see ServeCommand.Metrics.cs).</summary>
    const string MetricsHistogramsOption = "--metrics-histograms";

    public static Command Create()
    {
        var command = new Command("serve", "Run as a storage daemon with qemu-storage-daemon's options: " +
            "--blockdev, --chardev socket,..., --monitor, --nbd-server, --export, --pidfile, --daemonize, -T/--trace; and --log-level")
        {
            TreatUnmatchedTokensAsErrors = false,
        };
        command.SetAction((parse, cancellationToken) => CliErrors.RunAsync("serve", () => RunAsync([.. parse.UnmatchedTokens], cancellationToken)));
        return command;
    }

    /// <summary>One option of the command line, in order; <paramref name="Spelling"/> is how it was written, for messages.</summary>
    sealed record Setting(string Option, string? Value, string Spelling);

    static List<Setting> ReadSettings(IReadOnlyList<string> tokens)
    {
        var settings = new List<Setting>();
        for (var i = 0; i < tokens.Count; i++)
        {
            var token = tokens[i];
            string option, value;
            var equals = token.IndexOf('=', StringComparison.Ordinal);
            var spelling = token;
            if (token.StartsWith("--", StringComparison.Ordinal) && equals > 0 && Known.Contains(token[..equals]))
            {
                (option, value) = (token[..equals], token[(equals + 1)..]);
            }
            else if (token.StartsWith("-T", StringComparison.Ordinal) && token.Length > 2)
            {
                // getopt's short option with its value attached.
                (option, value) = ("-T", token[2..]);
            }
            else if (Flags.Contains(token))
            {
                settings.Add(new Setting(token, null, token));
                continue;
            }
            else if (Known.Contains(token))
            {
                if (i + 1 >= tokens.Count)
                {
                    throw new UsageException(token.StartsWith("--", StringComparison.Ordinal)
                        ? $"option '{token}' requires an argument" : $"option requires an argument -- '{token[1..]}'");
                }

                (option, value) = (token, tokens[++i]);
                spelling = $"{token} {value}";
            }
            else
            {
                // getopt's words, as qemu-storage-daemon's; serve --help lists the options.
                throw new UsageException(token.StartsWith('-') ? $"unrecognized option '{token}'" : $"{token}: Unexpected argument");
            }

            settings.Add(new Setting(option, value, spelling));
        }

        return settings;
    }

    static async Task<int> RunAsync(IReadOnlyList<string> tokens, CancellationToken cancellationToken)
    {
        // By default .NET hands every socket completion from its epoll thread to the thread pool, so an NBD
        // request woke two threads before its I/O was even submitted (epoll thread, then a pool worker).
        // Run completions on the epoll thread instead, as QEMU's main loop does: the NBD request loop only
        // parses and submits there (blocking requests go to the pool), and sends on the thread whose I/O
        // finished. Set before any socket exists; a value the user set is kept.
        if (Environment.GetEnvironmentVariable(InlineCompletionsVariable) is null)
        {
            Environment.SetEnvironmentVariable(InlineCompletionsVariable, "1");
        }

        var settings = ReadSettings(tokens);
        if (settings.Any(s => s.Option == "--daemonize") && Environment.GetEnvironmentVariable(DaemonChildVariable) is null)
        {
            return await DaemonizeAsync(tokens, cancellationToken);
        }

        // Under the JIT, compile the switch-over path now, not during the first pivot (see MirrorWarmup),
        // and the NBD request path before the first client connects (see NbdWarmup). The native build
        // (publish.sh) was compiled ahead of time: nothing to warm up.
        if (RuntimeFeature.IsDynamicCodeCompiled)
        {
            await BlockMirror.Jobs.Mirror.MirrorWarmup.RunAsync(cancellationToken);
            if (settings.Any(s => s.Option == "--nbd-server"))
            {
                await BlockMirror.Nbd.Server.NbdWarmup.RunAsync(cancellationToken);
            }
        }

        // Set up before anything that logs; disposed last, so what the daemon logs on its way out is written.
        using var logging = ServeLogging.Create(
            settings.Where(s => ServeLogging.Options.Contains(s.Option)).Select(s => (s.Option, s.Value!, s.Spelling)), Console.Error);
        if (logging is null)
        {
            // --trace help listed the events.
            return 0;
        }

        var sockets = SocketActivation.FromEnvironment();
        await using var daemon = new StorageDaemon(loggerFactory: logging.Factory);
        await using var monitors = new QmpServer(daemon.Commands, daemon.Jobs.Events, logging.Factory);
        daemon.EventRaised += monitors.Broadcast;
        var chardevs = new Dictionary<string, EndPoint>(StringComparer.Ordinal);
        string? pidfile = null;
        Telemetry.MetricsListenAddress? metricsListen = null;
        var metricsHistograms = false;

        // Sockets are bound as their options come, so an address in use fails there, but no client is
        // served before every option is applied and the pid file written: until then connections wait in
        // the listen backlog. qemu-storage-daemon does the same (its main loop, which accepts, starts last),
        // so a client that connects as soon as the socket exists finds every node and export in place.
        var serving = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        foreach (var setting in settings)
        {
            try
            {
                switch (setting.Option)
                {
                    case "--blockdev":
                        // Each of these runs its QMP command, so the command line and QMP accept and refuse alike.
                        await RunAsync(daemon, "blockdev-add", Arguments(setting.Value!, "driver"), cancellationToken);
                        break;
                    case "--chardev":
                        var (id, endPoint) = ReadChardev(Arguments(setting.Value!, "backend"), sockets);
                        if (!chardevs.TryAdd(id, endPoint))
                        {
                            throw new UsageException($"attempt to add duplicate property '{id}' to object (type 'container')");
                        }

                        break;
                    case "--monitor":
                        monitors.Listen(ReadMonitor(Arguments(setting.Value!, "chardev"), chardevs), serving.Task);
                        break;
                    case "--nbd-server":
                        var (nbdEndPoint, tlsCreds, tlsAuthz, maxConnections) = ReadNbdServer(Arguments(setting.Value!, null).Check(NbdServerOptions), sockets);
                        daemon.StartNbdServer(nbdEndPoint, tlsCreds, tlsAuthz, serving.Task, maxConnections);
                        break;
                    case "--export":
                        await RunAsync(daemon, "block-export-add", Arguments(setting.Value!, "type"), cancellationToken);
                        break;
                    case "--object":
                        await RunAsync(daemon, "object-add", Arguments(setting.Value!, "qom-type"), cancellationToken);
                        break;
                    case "--pidfile":
                        pidfile = setting.Value!;
                        break;
                    case MetricsListenOption:
                        metricsListen = Telemetry.MetricsListenAddress.Parse(setting.Value!);
                        break;
                    case MetricsHistogramsOption:
                        metricsHistograms = true;
                        break;
                }
            }
            catch (Exception ex) when (ex is QmpException or SocketException or JsonException or UsageException or BlockOpenException
                or BlockGraphException or BlockIOException or IOException or FormatException or ArgumentException)
            {
                // qemu-storage-daemon names the option it refuses: "--blockdev VALUE: what is wrong".
                var message = ex switch
                {
                    SocketException => $"Failed to bind socket: {ex.Message}",
                    _ => ex.Message,
                };
                throw new UsageException($"{setting.Option} {setting.Value}: {message}", ex);
            }
        }

        if (logging.LogFile is { } logFile && daemon.Graph.FindNodeUsingFile(logFile) is { } image)
        {
            // The log is appended to, never truncated, but an image must not grow log lines either.
            throw new UsageException($"Cannot log to '{logFile}': it is the image file of node '{image.Name}'");
        }

        // Handled from before the pid file exists: whoever reads it may signal at once, and must get a clean stop.
        var stop = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, context => { context.Cancel = true; stop.TrySetResult("SIGTERM"); });
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, context => { context.Cancel = true; stop.TrySetResult("SIGINT"); });

        // Writing the pid truncates the file: never one of the images being served, even one opened with
        // locking=off (QEMU's lock on the pid file fails against a locked image's locks; PidFile's does too).
        if (pidfile is not null && daemon.Graph.FindNodeUsingFile(pidfile) is not null)
        {
            throw new UsageException($"Cannot lock pid file '{pidfile}': it is an image file the daemon has open");
        }

        // Held until the daemon exits, then removed (if still this daemon's).
        using var pid = pidfile is null ? null : PidFile.Write(pidfile);

        using var metrics = StartMetrics(metricsListen, metricsHistograms);
        serving.SetResult();
        ServeLog.Started(logging.Serve, Environment.ProcessId);

        if (Environment.GetEnvironmentVariable(DaemonChildVariable) is not null)
        {
            // Tell the parent of --daemonize that we serve; it exits 0 and we carry on without it.
            Console.Out.WriteLine("ready");
            Console.Out.Flush();
            Console.SetOut(TextWriter.Null);
            Console.SetError(TextWriter.Null);
        }

        // Start-up is over: what it alone touched of the executable need not stay resident (StartupPages).
        StartupPages.ReleaseExecutable();
        SystemdNotify.Send("READY=1");

        var stopped = await Task.WhenAny(stop.Task, daemon.QuitRequested, Task.Delay(Timeout.Infinite, cancellationToken).ContinueWith(_ => { }, TaskScheduler.Default));
        ServeLog.Stopping(logging.Serve, stopped == daemon.QuitRequested ? "QMP quit" : stop.Task.IsCompletedSuccessfully ? stop.Task.Result : "cancelled");

        // On a signal as on quit, the monitors hear the jobs end before they close.
        SystemdNotify.Send("STOPPING=1");
        await daemon.StopServingAsync();
        return 0;
    }

    static async Task RunAsync(StorageDaemon daemon, string command, QmpArguments arguments, CancellationToken cancellationToken)
    {
        daemon.Commands.TryGet(command, out var declared);
        await declared.InvokeAsync(arguments, cancellationToken);
    }

    /// <summary>A value in qemu-storage-daemon's syntax: JSON when it starts with '{', key=value otherwise.</summary>
    static QmpArguments Arguments(string value, string? impliedKey)
    {
        if (value.TrimStart().StartsWith('{'))
        {
            var (document, error) = QmpJsonStreamer.ParseSingle(value);
            using (document)
            {
                return document is null ? throw new UsageException(error!) : new QmpArguments(document.RootElement.Clone());
            }
        }

        return new QmpArguments(KeyVal.Parse(value, impliedKey), keyval: true);
    }

    /// <summary><c>socket,id=ID,path=PATH|host=H,port=P|fd=N,server=on,wait=off</c>: a listening socket for a monitor.</summary>
    static (string Id, EndPoint EndPoint) ReadChardev(QmpArguments chardev, SocketActivation sockets)
    {
        var backend = chardev.RequireString("backend");
        var id = chardev.RequireString("id");
        var path = chardev.OptionalString("path");
        var host = chardev.OptionalString("host");
        var port = chardev.OptionalString("port");
        var fd = chardev.OptionalString("fd");
        var server = chardev.OptionalBool("server") ?? false;
        var wait = chardev.OptionalBool("wait") ?? true;
        chardev.Accept("telnet", "nodelay", "ipv4", "ipv6", "to", "logfile", "logappend");
        chardev.CheckNoneUnexpected();
        if (backend != "socket")
        {
            throw new UsageException($"chardev '{id}': backend '{backend}' is not supported (only socket)");
        }

        if (!server)
        {
            throw new UsageException($"chardev '{id}': only server=on sockets are supported");
        }

        if (wait)
        {
            throw new UsageException($"chardev '{id}': wait=on is not supported; add wait=off");
        }

        if ((path is null ? 0 : 1) + (host is null ? 0 : 1) + (fd is null ? 0 : 1) > 1)
        {
            throw new UsageException("None or one of 'path', 'fd' or 'host' option required.");
        }

        if (fd is not null)
        {
            return (id, sockets.Resolve(fd));
        }

        if (path is not null)
        {
            return (id, new UnixDomainSocketEndPoint(path));
        }

        if (host is null || port is null)
        {
            throw new UsageException($"chardev '{id}': give path=, or host= and port=");
        }

        var address = new QmpArguments(KeyVal.Parse($"type=inet,host={host.Replace(",", ",,", StringComparison.Ordinal)},port={port}"), keyval: true);
        return (id, StorageDaemon.ReadSocketAddress(address, legacy: false));
    }

    static EndPoint ReadMonitor(QmpArguments monitor, Dictionary<string, EndPoint> chardevs)
    {
        var chardev = monitor.RequireString("chardev");
        var mode = monitor.OptionalEnum("mode", "control", "readline") ?? "control";
        monitor.Accept("pretty", "id");
        monitor.CheckNoneUnexpected();
        if (mode != "control")
        {
            throw new UsageException("only mode=control monitors are supported");
        }

        return chardevs.TryGetValue(chardev, out var endPoint) ? endPoint : throw new UsageException($"chardev \"{chardev}\" not found");
    }

    /// <summary>
    /// <c>--nbd-server</c>'s options as QEMU declares them (NbdServerOptions: the flat SocketAddress, unlike
    /// nbd-server-start's), checked before they are read, as QMP's commands are.
    /// </summary>
    static readonly QapiObject NbdServerOptions = new("NbdServerOptions",
        ("addr", SocketAddressSchema.Flat), ("*tls-creds", QapiBuiltin.Str), ("*tls-authz", QapiBuiltin.Str), ("*max-connections", QapiBuiltin.UInt32));

    static (EndPoint EndPoint, string? TlsCreds, string? TlsAuthz, uint MaxConnections) ReadNbdServer(QmpArguments server, SocketActivation sockets)
    {
        var address = server.OptionalObject("addr")!;
        var endPoint = address.OptionalString("type") == "fd" ? ReadFdAddress(address, sockets) : StorageDaemon.ReadSocketAddress(address, legacy: false);
        var maxConnections = server.OptionalUInt32("max-connections") ?? NbdServer.DefaultMaxConnections;
        var tlsCreds = server.OptionalString("tls-creds");
        var tlsAuthz = server.OptionalString("tls-authz");
        server.CheckNoneUnexpected();
        return (endPoint, tlsCreds, tlsAuthz, maxConnections);
    }

    /// <summary><c>addr.type=fd,addr.str=N|NAME</c>: a socket the daemon was given (SocketAddress of type 'fd').</summary>
    static EndPoint ReadFdAddress(QmpArguments address, SocketActivation sockets)
    {
        var str = address.RequireString("str");
        address.CheckNoneUnexpected();
        return sockets.Resolve(str);
    }

    /// <summary>
    /// <c>--daemonize</c>: .NET cannot fork, so the parent starts itself again in a new session and returns
    /// once that child says it serves (qemu-storage-daemon returns at the same point), or fails with the
    /// child's error if it cannot start.
    /// </summary>
    static async Task<int> DaemonizeAsync(IReadOnlyList<string> tokens, CancellationToken cancellationToken)
    {
        var start = new ProcessStartInfo("setsid")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Environment.ProcessPath!);
        if (!Path.GetFileNameWithoutExtension(Environment.ProcessPath!).Equals("blockmirror", StringComparison.Ordinal))
        {
            // Run through the dotnet host: pass the entry assembly.
            start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "blockmirror.dll"));
        }

        start.ArgumentList.Add("serve");
        foreach (var token in tokens)
        {
            start.ArgumentList.Add(token);
        }

        start.Environment[DaemonChildVariable] = "1";
        using var child = Process.Start(start) ?? throw new UsageException("could not start the daemon process");
        child.StandardInput.Close();
        var ready = await child.StandardOutput.ReadLineAsync(cancellationToken);
        if (ready == "ready")
        {
            return 0;
        }

        await child.WaitForExitAsync(cancellationToken);
        var error = (await child.StandardError.ReadToEndAsync(cancellationToken)).Trim();
        await Console.Error.WriteLineAsync(error.Length > 0 ? error : $"blockmirror serve: the daemon exited with {child.ExitCode} before it was ready");
        return child.ExitCode == 0 ? 1 : child.ExitCode;
    }
}
