using System.Globalization;

using BlockMirror.Cli.Commands;

namespace BlockMirror.Cli.Telemetry;

/// <summary>
/// <c>--metrics-listen HOST:PORT</c>: where the Prometheus endpoint listens (<c>http://HOST:PORT/metrics</c>).
/// HOST is a name, an IPv4 address, an IPv6 address in brackets, or <c>*</c> for every address.
/// </summary>
sealed record MetricsListenAddress(string Host, int Port)
{
    public static MetricsListenAddress Parse(string value)
    {
        var colon = value.LastIndexOf(':');
        if (colon <= 0 || colon == value.Length - 1)
        {
            throw new UsageException($"'{value}' is not HOST:PORT");
        }

        var host = value[..colon];
        var portText = value[(colon + 1)..];
        if (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out var port) || port is < 1 or > 65535)
        {
            throw new UsageException($"port '{portText}' is not a number from 1 to 65535");
        }

        if (host.Contains(':', StringComparison.Ordinal) && !(host.StartsWith('[') && host.EndsWith(']')))
        {
            throw new UsageException($"IPv6 address '{host}' must be written in brackets: [{host}]:{port}");
        }

        return new MetricsListenAddress(host, port);
    }
}
