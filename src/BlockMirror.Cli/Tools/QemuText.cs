using System.Globalization;

namespace BlockMirror.Cli.Tools;

/// <summary>Numbers as qemu-img's human output prints them (C printf conversions QEMU uses).</summary>
static class QemuText
{
    static readonly string[] Prefixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

    /// <summary>
    /// QEMU's size_to_str: three significant digits (<c>%0.3g</c>) of a binary unit, switching to the next
    /// unit from 1000 of the current one on ("1000 KiB" is printed "0.977 MiB"): <c>4 MiB</c>, <c>324 KiB</c>,
    /// <c>1.5 GiB</c>, <c>0 B</c>.
    /// </summary>
    public static string SizeToString(long bytes)
    {
        var value = (double)bytes;
        var unit = 0;
        if (value > 0)
        {
            // frexp(value * 1024 / 1000) returns e with 2^(e-1) <= x < 2^e; QEMU divides e - 1 by 10.
            var exponent = Math.ILogB(value / (1000.0 / 1024.0));
            unit = Math.Clamp(exponent / 10, 0, Prefixes.Length - 1);
        }

        return $"{FormatG(value / Math.Pow(2, unit * 10), 3)} {Prefixes[unit]}B";
    }

    /// <summary>C's <c>%.{precision}g</c>: significant digits, trailing zeroes dropped, exponent form outside 1e-4..1e{precision}.</summary>
    public static string FormatG(double value, int precision)
    {
        if (value == 0)
        {
            return "0";
        }

        // Round to the significant digits first: the exponent of the rounded value picks the form.
        var scientific = value.ToString("E" + (precision - 1).ToString(CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
        var exponent = int.Parse(scientific[(scientific.IndexOf('E') + 1)..], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
        if (exponent < -4 || exponent >= precision)
        {
            var mantissa = TrimZeroes(scientific[..scientific.IndexOf('E')]);
            return string.Create(CultureInfo.InvariantCulture, $"{mantissa}e{(exponent < 0 ? '-' : '+')}{Math.Abs(exponent):00}");
        }

        var decimals = precision - 1 - exponent;
        return TrimZeroes(value.ToString("F" + decimals.ToString(CultureInfo.InvariantCulture), CultureInfo.InvariantCulture));
    }

    static string TrimZeroes(string number) =>
        number.Contains('.', StringComparison.Ordinal) ? number.TrimEnd('0').TrimEnd('.') : number;

    /// <summary>C's <c>%#-16"PRIx64</c>: hexadecimal with a 0x prefix (none for zero), left-aligned in 16 columns.</summary>
    public static string HexColumn(long value) =>
        (value == 0 ? "0" : "0x" + value.ToString("x", CultureInfo.InvariantCulture)).PadRight(16);

    /// <summary>C's <c>%0.2f</c>.</summary>
    public static string Percent(double value) => value.ToString("F2", CultureInfo.InvariantCulture);
}
