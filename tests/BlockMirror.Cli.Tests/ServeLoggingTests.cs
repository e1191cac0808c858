using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// What <c>blockmirror serve</c> writes to stderr: a refused NBD request (at debug) and a dropped connection,
/// with the reason, in the plain one-line form; the journal's form when <c>JOURNAL_STREAM</c> names stderr;
/// nothing at <c>--log-level none</c> nor, as qemu-storage-daemon, by default; traced events regardless of the
/// level, to stderr or to <c>--trace file=</c>.
/// </summary>
public sealed class ServeLoggingTests : IDisposable
{
    const long Size = 1 << 20;

    const string PlainLine = @"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (trace|debug|info|warning|error) [a-z_]+: ";

    readonly TempDirectory _dir = new("blockmirror-serve-log-");

    public void Dispose() => _dir.Dispose();

    string Socket => _dir.File("nbd.sock");

    string PidFile => _dir.File("pid");

    /// <summary>A null node of 1 MiB exported read-only as <c>disk</c>, served until SIGTERM, with <paramref name="logging"/>.</summary>
    string[] Arguments(params string[] logging) =>
    [
        "serve", .. logging,
        "--blockdev", $"driver=null-co,node-name=n,size={Size}",
        "--nbd-server", $"addr.type=unix,addr.path={Socket}",
        "--export", "nbd,id=exp0,node-name=n,name=disk",
        "--pidfile", PidFile,
    ];

    /// <summary>
    /// A log file that is an image in use, another process's (qemu-storage-daemon serving it) or one of the daemon's
    /// own nodes, is refused before a line is written, and the image is left as it was: appended lines would land
    /// where the image's owner writes its next clusters.
    /// </summary>
    [SkippableFact]
    public async Task A_log_file_that_is_an_image_in_use_is_refused_and_the_image_left_as_it_was()
    {
        var image = _dir.File("served.raw");
        await File.WriteAllBytesAsync(image, [.. Enumerable.Range(0, 1 << 20).Select(i => (byte)(i * 13 + 5))]);
        var fingerprint = QemuImages.Fingerprint(image);
        await using (await NbdServerProcess.QsdAsync(_dir.File("qsd.sock"), image))
        {
            var refused = await BlockMirrorCli.RunAsync("serve", "--blockdev", "driver=null-co,node-name=n", "--trace", $"file={image}");
            Assert.True(refused.ExitCode == 1, refused.ToString());
            SideBySide.AssertOneErrorLine(refused, "serve", $"--trace file={image}: Error opening logfile {image}: it is an image file another process has open");
            Assert.Equal(fingerprint, QemuImages.Fingerprint(image));
        }

        var own = await BlockMirrorCli.RunAsync("serve", "--blockdev", $"driver=file,node-name=f,filename={image}", "--trace", $"file={image}");
        Assert.True(own.ExitCode == 1, own.ToString());
        SideBySide.AssertOneErrorLine(own, "serve", $"Cannot log to '{image}': it is the image file of node 'f'");
        Assert.Equal(fingerprint, QemuImages.Fingerprint(image));
    }

    [Fact]
    public async Task A_refused_request_and_a_connection_dropped_in_the_middle_of_a_request_are_logged_on_stderr()
    {
        var stderr = await ServeAsync(Arguments("--log-level", "debug"), async () =>
        {
            using var client = await NbdClient.OpenAsync(Socket, "disk");
            Assert.Equal(22u, await client.RequestAsync(0 /* read */, Size, 512));
            // Half a request header, then gone.
            await client.SendAsync(new byte[10]);
        });

        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.All(lines, l => Assert.Matches(PlainLine, l));
        Assert.Contains(lines, l => l.EndsWith($" debug nbd_request_refused: client #1 (unix) export 'disk': Read offset {Size} length 512 refused with EINVAL: " +
            $"request [{Size}, +512) runs past the end of the export ({Size} bytes)", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.EndsWith(" warning nbd_client_dropped: client #1 (unix) dropped in transmission: EOF in the middle of a request header", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.EndsWith(" info serve_stopping: stopping: SIGTERM", StringComparison.Ordinal));
    }

    [Fact]
    public async Task By_default_and_at_log_level_none_serve_is_as_silent_as_qemu_storage_daemon()
    {
        static async Task DropAsync(string socket)
        {
            using var client = await NbdClient.OpenAsync(socket, "disk");
            Assert.Equal(22u, await client.RequestAsync(0, Size, 512));
        }

        // At info the same run logs (so the silence below is the level's doing).
        Assert.Contains("info nbd_client_connected: ", await ServeAsync(Arguments("--log-level", "info"), () => DropAsync(Socket)), StringComparison.Ordinal);
        Assert.Equal("", await ServeAsync(Arguments("--log-level", "none"), () => DropAsync(Socket)));
        Assert.Equal("", await ServeAsync(Arguments("--log-level=none"), () => Task.CompletedTask));
        // A drop without NBD_CMD_DISC is a warning, and the default level shows warnings.
        var byDefault = await ServeAsync(Arguments(), () => DropAsync(Socket));
        Assert.Matches(@"^\S+ warning nbd_client_dropped: client #1 \(unix\) dropped in transmission: EOF without NBD_CMD_DISC\n$", byDefault);
    }

    /// <summary>
    /// libnbd's clients end a listing with NBD_OPT_ABORT and close without waiting for the reply, as proto.md
    /// allows: an ordinary end, not a dropped client. serve used to warn on most listings ("dropped in the
    /// handshake: socket error: Broken pipe").
    /// </summary>
    [Fact]
    public async Task Listing_the_exports_and_closing_after_the_abort_is_no_warning()
    {
        ExternalTool.Require("nbdinfo");
        ExternalTool.Require("qemu-nbd");
        var stderr = await ServeAsync(Arguments(), async () =>
        {
            for (var round = 0; round < 8; round++)
            {
                Assert.Contains("export=\"disk\"", await ExternalTool.RunCheckedAsync("nbdinfo", "--list", $"nbd+unix://?socket={Socket}"), StringComparison.Ordinal);
                Assert.Contains("export: 'disk'", await ExternalTool.RunCheckedAsync("qemu-nbd", "--list", "-k", Socket), StringComparison.Ordinal);
            }
        });
        Assert.Equal("", stderr);
    }

    [Fact]
    public async Task A_traced_event_is_logged_whatever_the_level_and_file_sends_the_log_to_a_file()
    {
        var traced = await ServeAsync(Arguments("--log-level", "none", "-T", "nbd_request_*"), async () =>
        {
            using var client = await NbdClient.OpenAsync(Socket, "disk");
            Assert.Equal(22u, await client.RequestAsync(0, Size, 512));
        });
        Assert.Matches(@"^\S+ debug nbd_request_refused: client #1 \(unix\) export 'disk': Read offset 1048576 length 512 refused with EINVAL: [^\n]+\n$", traced);

        var events = _dir.File("events");
        await File.WriteAllTextAsync(events, "# connections\nnbd_client_*\n-nbd_client_export\n");
        var log = _dir.File("serve.log");
        await File.WriteAllTextAsync(log, "kept\n");
        var stderr = await ServeAsync(Arguments("--log-level=none", $"--trace=events={events},file={log}"), async () =>
        {
            using var client = await NbdClient.OpenAsync(Socket, "disk");
        });
        Assert.Equal("", stderr);
        var lines = await File.ReadAllLinesAsync(log);
        // Appended to, never truncated.
        Assert.Equal("kept", lines[0]);
        Assert.Equal(["nbd_client_connected", "nbd_client_dropped"], lines.Skip(1).Select(l => l.Split(' ')[2].TrimEnd(':')));
    }

    [Fact]
    public async Task Trace_help_lists_the_events_and_exits()
    {
        var result = await BlockMirrorCli.RunAsync("serve", "--trace", "help", "--blockdev", "driver=null-co,node-name=n");

        Assert.Equal(0, result.ExitCode);
        Assert.Contains("nbd_request_refused", result.OutputLines);
        Assert.Contains("job_state_change", result.OutputLines);
        Assert.Equal("", result.StandardError);
    }

    [Fact]
    public async Task A_bad_log_level_is_one_line()
    {
        var result = await BlockMirrorCli.RunAsync("serve", "--log-level", "loud");

        Assert.Equal(1, result.ExitCode);
        Assert.Equal(["blockmirror serve: --log-level loud: unknown level (expected trace, debug, info, warning, error, none)"], result.ErrorLines);
    }

    [Fact]
    public async Task Under_journal_stream_naming_stderr_lines_carry_the_syslog_priority_and_otherwise_not()
    {
        var log = _dir.File("stderr");
        await File.WriteAllTextAsync(log, "");
        var identity = (await ExternalTool.RunCheckedAsync("stat", "-L", "-c", "%d:%i", log)).Trim();

        var journal = await ServeRedirectedAsync(log, identity);
        Assert.Matches(@"^<6>graph_node_added: node 'n' added: driver null-co, read-write\n", journal);
        Assert.Contains("<6>serve_stopping: stopping: SIGTERM\n", journal, StringComparison.Ordinal);
        Assert.All(journal.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => Assert.Matches("^<[2-7]>[a-z_]+: ", l));

        // The variable names another stream (stderr was redirected since): plain lines.
        await File.WriteAllTextAsync(log, "");
        var plain = await ServeRedirectedAsync(log, "1:1");
        Assert.All(plain.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => Assert.Matches(PlainLine, l));
    }

    /// <summary>Runs serve at info with stderr appended to <paramref name="log"/> (as systemd connects it) and JOURNAL_STREAM set; returns the file.</summary>
    async Task<string> ServeRedirectedAsync(string log, string journalStream)
    {
        var start = new ProcessStartInfo("bash") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in (string[])["-c", "exec \"$@\" 2>>\"$LOG\"", "bash", .. BlockMirrorCli.Launcher, .. Arguments("--log-level", "info")])
        {
            start.ArgumentList.Add(argument);
        }

        start.Environment["LOG"] = log;
        start.Environment["JOURNAL_STREAM"] = journalStream;
        var stderr = await RunUntilTermAsync(start, () => Task.CompletedTask);
        Assert.Equal("", stderr);
        return await File.ReadAllTextAsync(log);
    }

    /// <summary>Starts serve, runs <paramref name="clients"/> once it serves (the pid file exists), stops it with SIGTERM; returns its stderr.</summary>
    Task<string> ServeAsync(string[] arguments, Func<Task> clients) => RunUntilTermAsync(BlockMirrorCli.StartInfo(arguments), clients);

    async Task<string> RunUntilTermAsync(ProcessStartInfo start, Func<Task> clients)
    {
        File.Delete(PidFile);
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        _ = process.StandardOutput.ReadToEndAsync();
        try
        {
            using (var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60)))
            {
                while (!File.Exists(PidFile))
                {
                    Assert.False(process.HasExited, process.HasExited ? $"serve exited with {process.ExitCode}: {await stderr}" : "");
                    await Task.Delay(20, timeout.Token);
                }
            }

            await clients();
            await ExternalTool.RunCheckedAsync("kill", "-TERM", $"{process.Id}");
            using (var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
            {
                await process.WaitForExitAsync(timeout.Token);
            }

            Assert.True(process.ExitCode == 0, $"serve exited with {process.ExitCode}: {await stderr}");
            return await stderr;
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }
    }

    /// <summary>Just enough of an NBD client over a Unix socket to send what a real client never would.</summary>
    sealed class NbdClient(Socket socket) : IDisposable
    {
        readonly NetworkStream _stream = new(socket, ownsSocket: true);

        /// <summary>Connects and chooses <paramref name="export"/> with NBD_OPT_GO (simple replies).</summary>
        public static async Task<NbdClient> OpenAsync(string path, string export)
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(path));
            var client = new NbdClient(socket);
            await client.ReadAsync(18);
            var name = Encoding.UTF8.GetBytes(export);
            var option = new byte[24 + name.Length + 2]; // flags, IHAVEOPT, option, length; name length, name, no info requests
            BinaryPrimitives.WriteUInt32BigEndian(option, 3); // fixed newstyle, no zeroes
            BinaryPrimitives.WriteUInt64BigEndian(option.AsSpan(4), 0x49484156454F5054); // IHAVEOPT
            BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(12), 7); // NBD_OPT_GO
            BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(16), (uint)(4 + name.Length + 2));
            BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(20), (uint)name.Length);
            name.CopyTo(option.AsSpan(24));
            await client.SendAsync(option);
            while (true)
            {
                var reply = await client.ReadAsync(20);
                await client.ReadAsync((int)BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(16)));
                if (BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(12)) == 1)
                {
                    return client; // NBD_REP_ACK
                }
            }
        }

        /// <summary>Sends one request without payload and returns the error of its simple reply.</summary>
        public async Task<uint> RequestAsync(ushort command, long offset, uint length)
        {
            var request = new byte[28];
            BinaryPrimitives.WriteUInt32BigEndian(request, 0x25609513);
            BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(6), command);
            BinaryPrimitives.WriteUInt64BigEndian(request.AsSpan(16), (ulong)offset);
            BinaryPrimitives.WriteUInt32BigEndian(request.AsSpan(24), length);
            await SendAsync(request);
            return BinaryPrimitives.ReadUInt32BigEndian((await ReadAsync(16)).AsSpan(4));
        }

        public async Task SendAsync(byte[] bytes) => await _stream.WriteAsync(bytes);

        async Task<byte[]> ReadAsync(int count)
        {
            var buffer = new byte[count];
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            await _stream.ReadExactlyAsync(buffer, timeout.Token);
            return buffer;
        }

        public void Dispose() => _stream.Dispose();
    }
}
