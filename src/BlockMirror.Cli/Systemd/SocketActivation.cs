using System.Globalization;
using BlockMirror.Cli.Commands;
using BlockMirror.Net.Listening;

namespace BlockMirror.Cli.Systemd;

/// <summary>
/// The sockets <c>serve</c> was given instead of binding its own: systemd's socket activation
/// (<c>LISTEN_PID</c>, <c>LISTEN_FDS</c>, <c>LISTEN_FDNAMES</c>: descriptors from 3 on, named by the socket
/// units' <c>FileDescriptorName=</c>) and any descriptor the parent left open. Options name them as QEMU's
/// <c>--chardev socket,fd=</c> and <c>--nbd-server addr.type=fd,addr.str=</c> do: by number, or (where QEMU's
/// monitor would look up a descriptor passed with getfd) by the name the service manager gave it.
/// </summary>
sealed class SocketActivation
{
    /// <summary>sd_listen_fds' first descriptor (SD_LISTEN_FDS_START).</summary>
    const int FirstDescriptor = 3;

    readonly string[] _names;
    readonly HashSet<int> _taken = [];

    SocketActivation(string[] names) => _names = names;

    /// <summary>The activated descriptors' names, in order (fd 3 first); empty when the service manager passed none.</summary>
    public IReadOnlyList<string> Names => _names;

    /// <summary>
    /// Reads what the service manager passed, then removes the variables (as sd_listen_fds does when asked), so
    /// a process this one starts does not take them for its own. Descriptors meant for another process (its
    /// pid in <c>LISTEN_PID</c>) are none of ours.
    /// </summary>
    public static SocketActivation FromEnvironment()
    {
        var pid = Environment.GetEnvironmentVariable("LISTEN_PID");
        var count = Environment.GetEnvironmentVariable("LISTEN_FDS");
        var names = Environment.GetEnvironmentVariable("LISTEN_FDNAMES");
        Environment.SetEnvironmentVariable("LISTEN_PID", null);
        Environment.SetEnvironmentVariable("LISTEN_FDS", null);
        Environment.SetEnvironmentVariable("LISTEN_FDNAMES", null);
        if (count is null || pid != Environment.ProcessId.ToString(CultureInfo.InvariantCulture))
        {
            return new SocketActivation([]);
        }

        if (!int.TryParse(count, NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n > 1024)
        {
            throw new UsageException($"socket activation: LISTEN_FDS='{count}' is not a number of descriptors");
        }

        // Names the service manager did not give are "unknown", as sd_listen_fds_with_names reports them.
        var given = names?.Split(':') ?? [];
        return new SocketActivation([.. Enumerable.Range(0, n).Select(i => i < given.Length && given[i].Length > 0 ? given[i] : "unknown")]);
    }

    /// <summary>
    /// The socket that <c>fd=</c> / <c>addr.str=</c> names: an activated descriptor's name, or a descriptor
    /// number (QEMU's words when it is neither a number nor a socket). The socket is made to listen here, as
    /// QEMU does when the option is applied, so an unusable one is refused by the option that names it.
    /// </summary>
    public InheritedSocketEndPoint Resolve(string value)
    {
        int fd;
        string description;
        var named = Array.IndexOf(_names, value);
        if (named >= 0 && !int.TryParse(value, out _))
        {
            fd = FirstDescriptor + named;
            description = $"'{value}' (fd {fd} from socket activation)";
        }
        else if (int.TryParse(value, NumberStyles.AllowLeadingWhite | NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out fd))
        {
            description = $"'{value}'";
        }
        else
        {
            throw new UsageException(_names.Length == 0
                ? $"Unable to parse FD number {value}"
                : $"Unable to parse FD number {value} (socket activation passed: {string.Join(", ", _names)})");
        }

        // Two listeners over one descriptor would both close it; QEMU's second would also steal the first's clients.
        if (fd >= 0 && !_taken.Add(fd))
        {
            throw new UsageException($"File descriptor {description} is already used by an earlier option");
        }

        var endPoint = InheritedSocketEndPoint.FromDescriptor(fd, description);
        endPoint.Listen(backlog: null);
        return endPoint;
    }
}
