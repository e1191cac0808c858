using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using BlockMirror.Block.Diagnostics;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Server;

/// <summary>
/// The NBD server's instruments on the BlockMirror meter: per export (tag <c>export</c>, the export id) and
/// command (tag <c>op</c>), the requests clients sent and the bytes they covered, and the requests answered
/// with an error. Observable counters over <see cref="NbdExportStatistics"/>: nothing is added to a request
/// for them.
/// </summary>
static class NbdMetrics
{
    static readonly ConditionalWeakTable<NbdServer, object> Servers = new();

    static readonly string[] CommandNames = ["read", "write", "disconnect", "flush", "trim", "cache", "write-zeroes", "block-status"];

    static NbdMetrics()
    {
        var meter = BlockMetrics.Meter;
        meter.CreateObservableCounter("blockmirror.export.requests", () => ObserveCommands(static (s, c) => s.Requests(c)),
            "{request}", "Requests NBD clients sent to an export, by export and command");
        meter.CreateObservableCounter("blockmirror.export.bytes", () => ObserveCommands(static (s, c) => s.Bytes(c)),
            "By", "Bytes NBD clients read, wrote, trimmed or zeroed through an export");
        meter.CreateObservableCounter("blockmirror.export.errors", ObserveErrors,
            "{request}", "Requests to an export answered with an error");
    }

    /// <summary>Measures the server's exports from now on, for as long as the server lives.</summary>
    internal static void Track(NbdServer server) => Servers.AddOrUpdate(server, server);

    static IEnumerable<Measurement<long>> ObserveCommands(Func<NbdExportStatistics, NbdCommand, long> read)
    {
        foreach (var (server, _) in Servers)
        {
            foreach (var export in server.Exports)
            {
                for (var command = 0; command < NbdExportStatistics.Commands; command++)
                {
                    if (command != (int)NbdCommand.Disconnect)
                    {
                        yield return new Measurement<long>(read(export.Statistics, (NbdCommand)command),
                            new KeyValuePair<string, object?>("export", export.Id), new KeyValuePair<string, object?>("op", CommandNames[command]));
                    }
                }
            }
        }
    }

    static IEnumerable<Measurement<long>> ObserveErrors()
    {
        foreach (var (server, _) in Servers)
        {
            foreach (var export in server.Exports)
            {
                yield return new Measurement<long>(export.Statistics.Errors, new KeyValuePair<string, object?>("export", export.Id));
            }
        }
    }
}
