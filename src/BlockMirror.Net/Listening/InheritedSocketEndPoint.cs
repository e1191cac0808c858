using System.Net;
using System.Net.Sockets;

namespace BlockMirror.Net.Listening;

/// <summary>
/// A socket the process was given rather than one it binds: a descriptor passed by its parent (QEMU's
/// <c>fd=</c> / <c>addr.type=fd</c>) or by the service manager (systemd's socket activation). Where an
/// <see cref="EndPoint"/> is expected (the NBD server, a QMP monitor), <see cref="SocketListener.Bind"/> listens
/// on this socket instead of binding a new one, so the servers need no second way in (Kestrel's
/// FileHandleEndPoint is the same idea).
/// </summary>
public sealed class InheritedSocketEndPoint : EndPoint
{
    InheritedSocketEndPoint(Socket socket, string description)
    {
        Socket = socket;
        Description = description;
    }

    /// <summary>The socket; the listener that takes it owns it from then on.</summary>
    public Socket Socket { get; }

    /// <summary>How errors name the descriptor (<c>'3'</c>, or a name and its number).</summary>
    public string Description { get; }

    public override AddressFamily AddressFamily => Socket.AddressFamily;

    /// <summary>
    /// Takes descriptor <paramref name="fd"/> as a socket, when it is an open socket (QEMU's fd_is_socket).
    /// Whether it can listen is found by <see cref="SocketListener.Bind"/>, which calls listen() on it as QEMU
    /// does, so a socket that is bound but not yet listening is taken too.
    /// </summary>
    /// <exception cref="IOException">The descriptor is not a socket (or not open), in QEMU's words.</exception>
    public static InheritedSocketEndPoint FromDescriptor(int fd, string description)
    {
        // Asked of /proc, not by wrapping the descriptor in a Socket and seeing it fail: a Socket that fails
        // closes what it was given, and a mistyped number may be one of the runtime's own descriptors.
        var link = fd < 0 ? null : new FileInfo($"/proc/self/fd/{fd}").LinkTarget;
        if (link is null || !link.StartsWith("socket:", StringComparison.Ordinal))
        {
            throw new IOException($"File descriptor {description} is not a socket");
        }

        return new InheritedSocketEndPoint(new Socket(new SafeSocketHandle(fd, ownsHandle: true)), description);
    }

    /// <summary>
    /// listen() on the socket, as QEMU's socket_listen does on a passed descriptor: a bound socket starts
    /// listening, a listening one takes the new backlog (null: the system's maximum).
    /// </summary>
    /// <exception cref="IOException">It cannot listen: a connected, unbound or datagram socket (QEMU's words).</exception>
    public void Listen(int? backlog)
    {
        try
        {
            if (backlog is { } n)
            {
                Socket.Listen(n);
            }
            else
            {
                Socket.Listen();
            }
        }
        catch (SocketException ex)
        {
            throw new IOException($"Failed to listen on fd socket: {ex.Message}", ex);
        }
    }

    public override string ToString() => $"fd {Description}";
}
