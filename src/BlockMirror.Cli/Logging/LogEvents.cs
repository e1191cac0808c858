using System.Diagnostics.CodeAnalysis;
using System.Reflection;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs;
using BlockMirror.Nbd.Server;
using BlockMirror.Qmp.Server;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Cli.Logging;

/// <summary>One event the daemon can log: its stable id and name, and the level it is logged at.</summary>
sealed record LogEvent(int Id, string Name, LogLevel Level);

/// <summary>
/// Every event the daemon logs, read from the <c>[LoggerMessage]</c> declarations of each area's log class, so
/// the list <c>--trace help</c> prints and <c>--trace</c> patterns match cannot drift from what is logged.
/// </summary>
static class LogEvents
{
    public static IReadOnlyList<LogEvent> All { get; } =
    [
        .. Declared(typeof(BlockGraphLog)), .. Declared(typeof(JobLog)), .. Declared(typeof(NbdServerLog)),
        .. Declared(typeof(QmpServerLog)), .. Declared(typeof(ServeLog)),
    ];

    /// <summary>The events a log class declares, by id. (Each type is named statically, so the AOT trimmer keeps its methods.)</summary>
    static IEnumerable<LogEvent> Declared([DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.NonPublicMethods)] Type area) =>
        area.GetMethods(BindingFlags.Static | BindingFlags.NonPublic)
            .Select(m => m.GetCustomAttribute<LoggerMessageAttribute>())
            .OfType<LoggerMessageAttribute>()
            .Select(a => new LogEvent(a.EventId, a.EventName ?? throw new InvalidOperationException($"{area.Name}: event {a.EventId} has no name"), a.Level))
            .OrderBy(e => e.Id);
}
