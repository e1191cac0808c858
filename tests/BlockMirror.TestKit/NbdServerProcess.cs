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

    readonly ServerProcess _server;

    NbdServerProcess(ServerProcess server, string socketPath)
    {
        _server = server;
        SocketPath = socketPath;
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

    static async Task<NbdServerProcess> StartAsync(string tool, string socketPath, string[] arguments) =>
        new(await ServerProcess.StartAsync(tool, arguments, new UnixDomainSocketEndPoint(socketPath)), socketPath);

    /// <summary>What the server wrote to standard error so far is only known once it has exited; this stops it first.</summary>
    public Task<string> StopAsync() => _server.StopAsync();

    public ValueTask DisposeAsync() => _server.DisposeAsync();
}
