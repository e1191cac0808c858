using System.Diagnostics;
using System.Net;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Two hosts for one test: the network namespaces and veth link of <see cref="NetworkNamespaces"/>, the storage
/// daemons started on them, and delaying relays on host A in front of host B's ports. Disposing kills every
/// daemon, stops the relays and deletes the namespaces, whatever the test did.
/// </summary>
/// <remarks>
/// Needs root and iproute2: skipped with the reason otherwise, and failed when <c>CI=true</c>, as every
/// interop test (<see cref="ExternalTool.Require"/>).
/// </remarks>
sealed class TwoHosts : IAsyncDisposable
{
    /// <summary>The round trip the relays add: two hosts in one data centre.</summary>
    public static readonly TimeSpan RoundTrip = TimeSpan.FromMilliseconds(10);

    readonly List<HostDaemon> _daemons = [];
    readonly List<DelayingRelay> _relays = [];

    TwoHosts(NetworkNamespaces namespaces) => Namespaces = namespaces;

    public NetworkNamespaces Namespaces { get; }

    /// <summary>Makes the two hosts, with the link limited to <paramref name="rate"/> (tc's words) when given.</summary>
    public static TwoHosts Create(string? rate = null)
    {
        ExternalTool.RequireRoot("two hosts need network namespaces, which need root");
        ExternalTool.Require("ip");
        ExternalTool.Require("tc");
        return new TwoHosts(NetworkNamespaces.Create(rate));
    }

    /// <summary>Starts a daemon on host A (<paramref name="onA"/>) or B; its monitor is <c>DIR/NAME-qmp.sock</c>.</summary>
    public async Task<HostDaemon> StartAsync(bool onA, DifferentialDaemon kind, string dir, string name, IEnumerable<string> arguments)
    {
        var daemon = await HostDaemon.StartAsync(onA ? Namespaces.A : Namespaces.B, kind, dir, name, arguments);
        _daemons.Add(daemon);
        return daemon;
    }

    /// <summary>A relay on host A, on its loopback, that reaches host B's <paramref name="port"/> with <see cref="RoundTrip"/> added.</summary>
    public async Task<DelayingRelay> RelayToBAsync(int port)
    {
        var relay = await DelayingRelay.StartAsync(new IPEndPoint(IPAddress.Loopback, 0), new IPEndPoint(IPAddress.Parse(NetworkNamespaces.AddressB), port), RoundTrip, Namespaces.A);
        _relays.Add(relay);
        return relay;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var daemon in _daemons)
        {
            await daemon.DisposeAsync();
        }

        foreach (var relay in _relays)
        {
            relay.Dispose();
        }

        Namespaces.Dispose();
    }
}
