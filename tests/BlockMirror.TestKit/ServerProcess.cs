using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace BlockMirror.TestKit;

/// <summary>
/// A server process a test starts and owns (qemu-nbd, qemu-storage-daemon, nbdkit): started, waited for
/// until it accepts connections on its address, and killed on dispose. Skips the test (fails it in CI) when
/// the tool is not installed.
/// </summary>
public sealed class ServerProcess : IAsyncDisposable
{
    readonly Process _process;
    readonly Task<string> _stderr;
    bool _disposed;

    ServerProcess(Process process)
    {
        _process = process;
        _stderr = process.StandardError.ReadToEndAsync();
        _ = process.StandardOutput.ReadToEndAsync();
    }

    public int Id => _process.Id;

    public bool HasExited => _process.HasExited;

    /// <summary>Starts <paramref name="tool"/> and returns once a connection to <paramref name="listensOn"/> succeeds.</summary>
    public static async Task<ServerProcess> StartAsync(string tool, IEnumerable<string> arguments, EndPoint listensOn)
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
        var server = new ServerProcess(await started.Task);
        try
        {
            await server.WaitListeningAsync(listensOn);
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
        }) { IsBackground = true, Name = "server starter" }.Start();
        return starts;
    }

    /// <summary>Waits until a connection to the address succeeds (the server greets it and sees it go).</summary>
    async Task WaitListeningAsync(EndPoint address)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (true)
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"{_process.StartInfo.FileName} exited with {_process.ExitCode}: {await _stderr}");
            }

            try
            {
                using var socket = new Socket(address.AddressFamily, SocketType.Stream,
                    address is UnixDomainSocketEndPoint ? ProtocolType.Unspecified : ProtocolType.Tcp);
                await socket.ConnectAsync(address);
                return;
            }
            catch (SocketException) when (DateTime.UtcNow < deadline)
            {
            }
            catch (SocketException)
            {
                throw new TimeoutException($"{_process.StartInfo.FileName} did not listen on {address} within 20 s");
            }

            await Task.Delay(20);
        }
    }

    /// <summary>What the server wrote to standard error; known once it has exited, so this stops it first.</summary>
    public async Task<string> StopAsync()
    {
        await DisposeAsync();
        return await _stderr;
    }

    /// <summary>Kills the server (once; again is nothing) and waits for it to be gone.</summary>
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
