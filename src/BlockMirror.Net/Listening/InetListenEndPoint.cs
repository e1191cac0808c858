using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace BlockMirror.Net.Listening;

/// <summary>
/// A TCP address to listen on, as QEMU reads an InetSocketAddress for a server: the host resolved to every address
/// it has (an empty host: every local address, IPv4 and IPv6), each listened on by a socket of its own
/// (<see cref="SocketListener.Bind"/>), as QEMU's QIONetListener does. An IPv6 socket takes IPv4 clients too
/// unless <c>ipv4=off</c> or <c>ipv6=on</c> alone asks for IPv6 only, so <c>host=::</c> is reachable over IPv4,
/// as on QEMU.
/// </summary>
public sealed class InetListenEndPoint : EndPoint
{
    InetListenEndPoint(IReadOnlyList<IPEndPoint> addresses, bool v6Only, string description)
    {
        Addresses = addresses;
        V6Only = v6Only;
        Description = description;
    }

    /// <summary>The addresses to listen on, in the order they are bound.</summary>
    public IReadOnlyList<IPEndPoint> Addresses { get; }

    /// <summary>Whether the IPv6 sockets refuse IPv4 clients (IPV6_V6ONLY).</summary>
    public bool V6Only { get; }

    /// <summary><c>host:port</c> as given, as QEMU's errors name it.</summary>
    public string Description { get; }

    public override AddressFamily AddressFamily => Addresses[0].AddressFamily;

    /// <summary>
    /// Resolves <paramref name="host"/> and <paramref name="port"/> (a number or a service name of
    /// <c>/etc/services</c>) as QEMU does for a listening socket (<see cref="AddressInfo"/>): the families
    /// <paramref name="ipv4"/> and <paramref name="ipv6"/> allow, numeric addresses only with <paramref name="numeric"/>.
    /// </summary>
    /// <exception cref="ArgumentException">It cannot be resolved; the message is QEMU's.</exception>
    public static InetListenEndPoint Resolve(string host, string port, bool? ipv4, bool? ipv6, bool numeric)
    {
        // QEMU's inet_ai_family_from_address: naming one family alone, or turning one off, leaves the other.
        if (ipv4 == false && ipv6 == false)
        {
            throw new ArgumentException("Cannot disable IPv4 and IPv6 at same time");
        }

        var family = (ipv4, ipv6) switch
        {
            (true, true) => AddressFamily.Unspecified,
            (_, true) or (false, _) => AddressFamily.InterNetworkV6,
            (true, _) or (_, false) => AddressFamily.InterNetwork,
            _ => AddressFamily.Unspecified,
        };

        // QEMU's try_bind: an IPv6 socket is dual-stack unless a family was named without the other.
        var v6Only = !(ipv4 is null && ipv6 is null || ipv4 == true && ipv6 == true);
        var description = $"{host}:{port}";

        // glibc reads a numeric service with strtoul and keeps 16 bits (70000 listens on 4464, as on QEMU); a
        // number out of range is refused here instead.
        if (ulong.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out var number) && number > ushort.MaxValue)
        {
            throw new ArgumentException($"address resolution failed for {description}: port {port} is over 65535");
        }

        try
        {
            var addresses = AddressInfo.Resolve(host.Length == 0 ? null : host, port, family, numeric);
            return addresses.Count > 0 ? new InetListenEndPoint(addresses, v6Only, description) : throw new ArgumentException("Name or service not known");
        }
        catch (ArgumentException ex)
        {
            throw new ArgumentException($"address resolution failed for {description}: {ex.Message}", ex);
        }
    }

    public override string ToString() => Description;
}
