using System.Globalization;
using BlockMirror.Block.Interop;

namespace BlockMirror.Cli.Logging;

/// <summary>
/// systemd's convention for a service whose stderr is connected to the journal: it sets <c>JOURNAL_STREAM</c>
/// to that stream's <c>device:inode</c>. Only when stderr is still that stream (not redirected since) do log
/// lines carry the journal's <c>&lt;N&gt;</c> priority prefix.
/// </summary>
static class JournalStream
{
    public const string Variable = "JOURNAL_STREAM";

    public static bool IsStderr() => Matches(Environment.GetEnvironmentVariable(Variable), FileStatus.IdentifyDescriptor(2));

    /// <summary>Whether <paramref name="value"/> (the variable, "DEVICE:INODE" in decimal) names <paramref name="stderr"/>.</summary>
    public static bool Matches(string? value, (ulong Device, ulong Inode)? stderr)
    {
        if (value is null || stderr is not { } id || value.Split(':') is not [var device, var inode])
        {
            return false;
        }

        return ulong.TryParse(device, NumberStyles.None, CultureInfo.InvariantCulture, out var d) &&
            ulong.TryParse(inode, NumberStyles.None, CultureInfo.InvariantCulture, out var i) &&
            d == id.Device && i == id.Inode;
    }
}
