using System.Net;
using System.Net.Sockets;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Io;

namespace BlockMirror.Nbd.Client;

/// <summary>
/// Where the NBD server listens (QEMU's SocketAddress, the <c>server</c> option): a Unix socket path, or a host
/// and port. Connects, in QEMU's words when it cannot.
/// </summary>
public sealed record NbdServerAddress
{
    /// <summary>The port NBD servers listen on unless told otherwise.</summary>
    public const int DefaultPort = 10809;

    public string? UnixPath { get; init; }

    /// <summary>A Linux abstract socket name (no file): <see cref="UnixPath"/> is its name.</summary>
    public bool Abstract { get; init; }

    public string? Host { get; init; }

    public string? Port { get; init; }

    /// <summary>Only IPv4 or only IPv6 addresses of <see cref="Host"/> (QEMU's ipv4/ipv6 members).</summary>
    public AddressFamily? Family { get; init; }

    /// <summary>The host must be a numeric address: no name lookup.</summary>
    public bool Numeric { get; init; }

    /// <summary>TCP keep-alive on the connection, so a dead peer is noticed without traffic.</summary>
    public bool KeepAlive { get; init; }

    public bool IsUnix => UnixPath is not null;

    /// <summary>Socket send buffer: room for a whole 1 MiB write and its neighbours.</summary>
    const int SendBuffer = 4 << 20;

    /// <summary>The address as QEMU's messages show it: the path, or <c>host:port</c>.</summary>
    public override string ToString() => UnixPath ?? $"{Host}:{Port}";

    /// <summary>Opens a connected socket stream, or throws <see cref="BlockOpenException"/> with QEMU's wording.</summary>
    public async Task<NetworkStream> ConnectAsync(CancellationToken cancellationToken)
    {
        if (UnixPath is not null)
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                socket.SendBufferSize = SendBuffer;
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(Abstract ? "\0" + UnixPath : UnixPath), cancellationToken).ConfigureAwait(false);
                return new NetworkStream(socket, ownsSocket: true);
            }
            catch (SocketException ex)
            {
                socket.Dispose();
                throw Failed(ex);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }

        if (!int.TryParse(Port, out var port) || port is < 0 or > 65535)
        {
            // QEMU resolves the port as a service name too; a number is what NBD users give.
            throw new BlockOpenException($"address resolution failed for {Host}:{Port}: Servname not supported for ai_socktype");
        }

        IPAddress[] addresses;
        if (IPAddress.TryParse(Host!.Trim('[', ']'), out var numeric))
        {
            addresses = [numeric];
        }
        else if (Numeric)
        {
            throw new BlockOpenException($"address resolution failed for {Host}:{Port}: Name or service not known");
        }
        else
        {
            try
            {
                addresses = await Dns.GetHostAddressesAsync(Host!, cancellationToken).ConfigureAwait(false);
            }
            catch (SocketException ex)
            {
                throw new BlockOpenException($"address resolution failed for {Host}:{Port}: {ex.Message}", BlockErrno.EINVAL, ex);
            }
        }

        SocketException? last = null;
        foreach (var address in addresses.Where(a => Family is null || a.AddressFamily == Family))
        {
            var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                await socket.ConnectAsync(new IPEndPoint(address, port), cancellationToken).ConfigureAwait(false);
                // Requests are small and latency-bound: never wait to coalesce them.
                socket.NoDelay = true;
                if (KeepAlive)
                {
                    socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
                }

                return new NetworkStream(socket, ownsSocket: true);
            }
            catch (SocketException ex)
            {
                socket.Dispose();
                last = ex;
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }

        throw last is null
            ? new BlockOpenException($"address resolution failed for {Host}:{Port}: Address family for hostname not supported")
            : Failed(last);
    }

    BlockOpenException Failed(SocketException ex)
    {
        var errno = ex.NativeErrorCode is > 0 and < 4096 ? ex.NativeErrorCode : (int)BlockErrno.EIO;
        if (IsUnix && ex.SocketErrorCode == SocketError.AddressNotAvailable)
        {
            // .NET reports connect(2)'s ENOENT on a Unix socket path as "address not available".
            errno = (int)BlockErrno.ENOENT;
        }

        return new BlockOpenException($"Failed to connect to '{this}': {BlockErrnoText.DescribeErrno(errno)}", BlockErrnoText.FromErrno(errno), ex);
    }
}
