using System.Globalization;

namespace BlockMirror.Block.Io;

/// <summary>Sizes as people and qemu-img write them: <c>512</c>, <c>64K</c>, <c>1.5G</c>, <c>16M</c>, <c>2T</c> (powers of 1024).</summary>
public static class ByteSize
{
    const string Suffixes = "BKMGTPE";

    /// <summary>Parses a size; a suffix (K, M, G, T, P, E, optionally followed by "iB" or "B") scales by 1024s.</summary>
    public static bool TryParse(string? text, out long bytes)
    {
        bytes = 0;
        if (string.IsNullOrWhiteSpace(text))
        {
            return false;
        }

        var s = text.Trim();
        var unit = 0;
        if (s.EndsWith("iB", StringComparison.OrdinalIgnoreCase))
        {
            s = s[..^2];
        }
        else if (s.Length > 1 && (s[^1] is 'B' or 'b') && char.IsLetter(s[^2]))
        {
            s = s[..^1];
        }

        if (s.Length > 0 && char.IsLetter(s[^1]))
        {
            unit = Suffixes.IndexOf(char.ToUpperInvariant(s[^1]));
            if (unit < 0)
            {
                return false;
            }

            s = s[..^1];
        }

        if (!decimal.TryParse(s, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var value) || value < 0)
        {
            return false;
        }

        try
        {
            var scaled = value;
            for (var i = 0; i < unit; i++)
            {
                scaled *= 1024;
            }

            if (scaled != decimal.Truncate(scaled) || scaled > long.MaxValue)
            {
                return false;
            }

            bytes = (long)scaled;
            return true;
        }
        catch (OverflowException)
        {
            return false;
        }
    }

    /// <summary>Parses or throws a <see cref="FormatException"/> that quotes the text and the expected shape.</summary>
    public static long Parse(string text, string what = "size") =>
        TryParse(text, out var bytes)
            ? bytes
            : throw new FormatException($"invalid {what} '{text}': expected a number of bytes with an optional suffix K, M, G, T, P or E (e.g. 64K, 1.5G)");

    /// <summary>Formats with binary units, e.g. <c>1.5 GiB</c>, <c>512 B</c>.</summary>
    public static string Format(double bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        var unit = 0;
        while (Math.Abs(bytes) >= 1024 && unit < units.Length - 1)
        {
            bytes /= 1024;
            unit++;
        }

        return unit == 0
            ? string.Create(CultureInfo.InvariantCulture, $"{bytes:0} {units[unit]}")
            : string.Create(CultureInfo.InvariantCulture, $"{bytes:0.##} {units[unit]}");
    }
}
