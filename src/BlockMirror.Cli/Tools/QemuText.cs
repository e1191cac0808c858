using System.Globalization;
using System.Numerics;

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
        var unit = 0;
        if (bytes > 0)
        {
            // frexp(bytes * 1024 / 1000) returns e with 2^(e-1) <= x < 2^e; QEMU divides e - 1 by 10.
            var exponent = Math.ILogB(bytes / (1000.0 / 1024.0));
            unit = Math.Clamp(exponent / 10, 0, Prefixes.Length - 1);
        }

        return $"{FormatG(bytes, BigInteger.One << (unit * 10), 3)} {Prefixes[unit]}B";
    }

    /// <summary>
    /// C's <c>%.{precision}g</c> of the exact fraction <paramref name="numerator"/> / <paramref name="denominator"/>
    /// (both positive, or a zero numerator): significant digits rounded half to even as glibc rounds an exact
    /// tie (1.125 gives "1.12"), trailing zeroes dropped, exponent form outside 1e-4..1e{precision}.
    /// </summary>
    public static string FormatG(BigInteger numerator, BigInteger denominator, int precision)
    {
        if (numerator.IsZero)
        {
            return "0";
        }

        // The decimal exponent: 10^e <= n/d < 10^(e+1).
        var e = (int)Math.Floor(BigInteger.Log10(numerator) - BigInteger.Log10(denominator));
        while (Compare(numerator, denominator, e) < 0)
        {
            e--;
        }

        while (Compare(numerator, denominator, e + 1) >= 0)
        {
            e++;
        }

        // The first `precision` digits: n/d * 10^(precision-1-e), rounded half to even.
        var shift = precision - 1 - e;
        var top = shift >= 0 ? numerator * BigInteger.Pow(10, shift) : numerator;
        var bottom = shift >= 0 ? denominator : denominator * BigInteger.Pow(10, -shift);
        var digits = BigInteger.DivRem(top, bottom, out var remainder);
        var twice = remainder * 2;
        if (twice > bottom || (twice == bottom && !digits.IsEven))
        {
            digits++;
        }

        if (digits == BigInteger.Pow(10, precision))
        {
            digits /= 10;
            e++;
        }

        var text = digits.ToString(CultureInfo.InvariantCulture);
        if (e < -4 || e >= precision)
        {
            var mantissa = TrimZeroes(text.Length > 1 ? $"{text[0]}.{text[1..]}" : text);
            return string.Create(CultureInfo.InvariantCulture, $"{mantissa}e{(e < 0 ? '-' : '+')}{Math.Abs(e):00}");
        }

        var decimals = precision - 1 - e;
        text = text.PadLeft(decimals + 1, '0');
        return TrimZeroes(decimals == 0 ? text : $"{text[..^decimals]}.{text[^decimals..]}");
    }

    /// <summary>Compares n/d with 10^e.</summary>
    static int Compare(BigInteger numerator, BigInteger denominator, int e) =>
        e >= 0 ? numerator.CompareTo(denominator * BigInteger.Pow(10, e)) : (numerator * BigInteger.Pow(10, -e)).CompareTo(denominator);

    static string TrimZeroes(string number) =>
        number.Contains('.', StringComparison.Ordinal) ? number.TrimEnd('0').TrimEnd('.') : number;

    /// <summary>C's <c>%#-16"PRIx64</c>: hexadecimal with a 0x prefix (none for zero), left-aligned in 16 columns.</summary>
    public static string HexColumn(long value) =>
        (value == 0 ? "0" : "0x" + value.ToString("x", CultureInfo.InvariantCulture)).PadRight(16);

    /// <summary>C's <c>%0.2f</c>.</summary>
    public static string Percent(double value) => value.ToString("F2", CultureInfo.InvariantCulture);
}
