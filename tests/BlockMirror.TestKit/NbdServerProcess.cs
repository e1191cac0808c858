using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;

namespace BlockMirror.TestKit;

/// <summary>
/// A real NBD server (qemu-nbd, qemu-storage-daemon, nbdkit) started by a test on a Unix socket of its own,
/// serving one export named <see cref="ExportName"/>; killed on dispose. Skips the test (fails it in CI) when
/// the tool is not installed.
/// </summary>
public sealed class NbdServerProcess : IAsyncDisposable
{
    public const string ExportName = "disk";

    readonly Process _process;
    readonly Task<string> _stderr;
    bool _disposed;

    NbdServerProcess(Process process, string socketPath)
    {
        _process = process;
        SocketPath = socketPath;
        _stderr = process.StandardError.ReadToEndAsync();
        _ = process.StandardOutput.ReadToEndAsync();
    }

    public string SocketPath { get; }

    /// <summary>The export as QEMU's tools name it.</summary>
    public string Uri => $"nbd+unix:///{ExportName}?socket={SocketPath}";

    /// <summary>qemu-nbd serving a raw <paramref name="file"/> to up to 8 clients at once, for as long as it runs.</summary>
    public static Task<NbdServerProcess> QemuNbdAsync(string socketPath, string file, params string[] options) =>
        StartAsync("qemu-nbd", socketPath, ["-k", socketPath, "-x", ExportName, "-f", "raw", "-t", "-e", "8", .. options, file]);

    /// <summary>qemu-storage-daemon exporting a raw <paramref name="file"/> (a file node with <c>discard=unmap</c>).</summary>
    public static Task<NbdServerProcess> QsdAsync(string socketPath, string file, bool writable = true) =>
        StartAsync("qemu-storage-daemon", socketPath,
        [
            "--blockdev", $"driver=file,node-name=disk,filename={file},discard=unmap",
            "--nbd-server", $"addr.type=unix,addr.path={socketPath}",
            "--export", $"type=nbd,id=exp0,node-name=disk,name={ExportName},writable={(writable ? "on" : "off")}",
        ]);

    /// <summary>nbdkit with <paramref name="arguments"/> (options and filters, the plugin and its parameters).</summary>
    public static Task<NbdServerProcess> NbdkitAsync(string socketPath, params string[] arguments) =>
        StartAsync("nbdkit", socketPath, ["-f", "-U", socketPath, "-e", ExportName, .. arguments]);

    static async Task<NbdServerProcess> StartAsync(string tool, string socketPath, string[] arguments)
    {
        var start = new ProcessStartInfo(ExternalTool.Require(tool))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        var started = new TaskCompletionSource<Process>(TaskCreationOptions.RunContinuationsAsynchronously);
        Starts.Add((start, started));
        var server = new NbdServerProcess(await started.Task, socketPath);
        try
        {
            await server.WaitListeningAsync();
            return server;
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// Servers are started from one thread that lives as long as the test process. Started from a pool thread,
    /// nbdkit got SIGTERM when that thread ended (the test host's children carry a parent-death signal, which
    /// the kernel sends when the forking thread exits) and quit in the middle of a test.
    /// </summary>
    static readonly BlockingCollection<(ProcessStartInfo Start, TaskCompletionSource<Process> Started)> Starts = StartStarter();

    static BlockingCollection<(ProcessStartInfo, TaskCompletionSource<Process>)> StartStarter()
    {
        var starts = new BlockingCollection<(ProcessStartInfo, TaskCompletionSource<Process>)>();
        new Thread(() =>
        {
            foreach (var (start, started) in starts.GetConsumingEnumerable())
            {
                try
                {
                    started.SetResult(Process.Start(start)!);
                }
                catch (Exception ex)
                {
                    started.SetException(ex);
                }
            }
        }) { IsBackground = true, Name = "NBD server starter" }.Start();
        return starts;
    }

    /// <summary>Waits until a connection to the socket succeeds (the server greets it and sees it go).</summary>
    async Task WaitListeningAsync()
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (true)
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"{_process.StartInfo.FileName} exited with {_process.ExitCode}: {await _stderr}");
            }

            if (File.Exists(SocketPath))
            {
                try
                {
                    using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath));
                    return;
                }
                catch (SocketException) when (DateTime.UtcNow < deadline)
                {
                }
            }

            if (DateTime.UtcNow >= deadline)
            {
                throw new TimeoutException($"{_process.StartInfo.FileName} did not listen on {SocketPath} within 20 s");
            }

            await Task.Delay(20);
        }
    }

    /// <summary>What the server wrote to standard error so far is only known once it has exited; this stops it first.</summary>
    public async Task<string> StopAsync()
    {
        await DisposeAsync();
        return await _stderr;
    }

    public async ValueTask DisposeAsync()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }

        await _process.WaitForExitAsync();
        _process.Dispose();
    }
}
