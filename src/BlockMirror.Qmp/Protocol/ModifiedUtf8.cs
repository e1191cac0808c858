using System.Text;

namespace BlockMirror.Qmp.Protocol;

/// <summary>
/// The UTF-8 QEMU's JSON parser accepts (qemu util/unicode.c): plain UTF-8, plus the two-byte form of
/// U+0000 (<c>C0 80</c>, "modified UTF-8"); surrogates, Unicode's 66 noncharacters, values past U+10FFFF
/// and other overlong forms are invalid. Used for string contents and for echoing bad input in an error.
/// </summary>
static class ModifiedUtf8
{
    /// <summary>A code point QEMU accepts in a string, from bytes or from a <c>\u</c> escape.</summary>
    public static bool IsValid(int codePoint) =>
        codePoint is >= 0 and <= 0x10FFFF
        && codePoint is not (>= 0xD800 and <= 0xDFFF)
        && codePoint is not (>= 0xFDD0 and <= 0xFDEF)
        && (codePoint & 0xFFFE) != 0xFFFE;

    /// <summary>
    /// Decodes the sequence at the start of <paramref name="bytes"/> (the end of the span reads as a zero
    /// byte, as the C string does): the code point, or -1 when invalid. <paramref name="length"/> is how many
    /// bytes the sequence takes (at least 1 when the span is not empty), so that a caller can step over a
    /// bad one as QEMU does.
    /// </summary>
    public static int Decode(ReadOnlySpan<byte> bytes, out int length)
    {
        if (bytes.IsEmpty || bytes[0] == 0)
        {
            length = 0;
            return -1;
        }

        int first = bytes[0];
        length = 1;
        if (first < 0x80)
        {
            return first;
        }

        if (first >= 0xFE || (first & 0x40) == 0)
        {
            // An impossible byte, or a continuation byte with nothing before it.
            return -1;
        }

        var expected = 0;
        for (var mask = 0x80; (first & mask) != 0; mask >>= 1)
        {
            expected++;
        }

        var codePoint = first & ((0x80 >> expected) - 1);
        for (var i = 1; i < expected; i++)
        {
            var next = i < bytes.Length ? bytes[i] : 0;
            if ((next & 0xC0) != 0x80)
            {
                return -1;
            }

            length++;
            codePoint = (codePoint << 6) | (next & 0x3F);
        }

        // The smallest code point each length may carry; "C0 80" (U+0000) is the one overlong form allowed.
        ReadOnlySpan<int> smallest = [0x80, 0x800, 0x10000, 0x200000, 0x4000000];
        var overlong = codePoint < smallest[expected - 2] && !(codePoint == 0 && expected == 2);
        return overlong || !IsValid(codePoint) ? -1 : codePoint;
    }

    /// <summary>Bad input as QEMU quotes it in an error: up to its first zero byte, each invalid sequence as U+FFFD.</summary>
    public static string Quote(ReadOnlySpan<byte> bytes)
    {
        var end = bytes.IndexOf((byte)0);
        if (end >= 0)
        {
            bytes = bytes[..end];
        }

        var text = new StringBuilder(bytes.Length);
        while (!bytes.IsEmpty)
        {
            var codePoint = Decode(bytes, out var length);
            AppendCodePoint(text, codePoint < 0 ? 0xFFFD : codePoint);
            bytes = bytes[Math.Max(length, 1)..];
        }

        return text.ToString();
    }

    public static void AppendCodePoint(StringBuilder text, int codePoint)
    {
        if (codePoint < 0x10000)
        {
            text.Append((char)codePoint);
        }
        else
        {
            text.Append(char.ConvertFromUtf32(codePoint));
        }
    }
}
