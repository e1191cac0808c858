using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using BlockMirror.TestKit;

namespace BlockMirror.Nbd.Tests;

/// <summary>Another NBD server (qemu-storage-daemon, nbdkit) run on a free loopback port for a differential test.</summary>
static class ExternalNbdDaemon
{
    /// <summary>
    /// Starts <paramref name="tool"/> with <paramref name="arguments"/> for a port, and runs <paramref name="talk"/>
    /// against it. The free port is only free when asked for: a daemon that cannot start, or that drops the first
    /// connection, gets two more tries on new ports.
    /// </summary>
    public static async Task<T> RunAsync<T>(string tool, Func<int, string[]> arguments, Func<int, Task<T>> talk)
    {
        for (var attempt = 1; ; attempt++)
        {
            var port = FreePort();
            var start = new ProcessStartInfo(tool) { RedirectStandardError = true, RedirectStandardOutput = true, RedirectStandardInput = true };
            foreach (var argument in arguments(port))
            {
                start.ArgumentList.Add(argument);
            }

            using var process = Process.Start(start)!;
            try
            {
                await WaitForPortAsync(port, process);
                return await talk(port);
            }
            catch (Exception e) when (attempt < 3 && e is DaemonGoneException or IOException or SocketException)
            {
            }
            finally
            {
                if (!process.HasExited)
                {
                    process.Kill();
                }

                await process.WaitForExitAsync();
            }
        }
    }

    /// <summary>A new raw image of <paramref name="size"/> bytes, all hole, in <paramref name="dir"/>, for the daemon to export.</summary>
    public static string NewImage(TempDirectory dir, long size)
    {
        var path = dir.File("disk.raw");
        using var stream = new FileStream(path, FileMode.CreateNew);
        stream.SetLength(size);
        return path;
    }

    sealed class DaemonGoneException(string message) : Exception(message);

    static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    static async Task WaitForPortAsync(int port, Process process)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (true)
        {
            if (process.HasExited)
            {
                throw new DaemonGoneException($"{process.StartInfo.FileName} exited with {process.ExitCode}: {await process.StandardError.ReadToEndAsync()}");
            }

            try
            {
                using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port));
                return;
            }
            catch (SocketException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(50);
            }
        }
    }
}
