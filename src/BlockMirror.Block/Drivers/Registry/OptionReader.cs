using System.Text.Json;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Block.Drivers.Registry;

/// <summary>
/// An options object (a QMP command's <c>arguments</c>, a node's <c>BlockdevOptions</c>), read the way QEMU's QAPI input visitor reads it: each member is
/// checked for presence and type as it is asked for (missing and mistyped members are reported in that
/// order, with QEMU's wording), and <see cref="CheckNoneUnexpected"/> then refuses members nobody asked for.
/// Handlers read every argument before they change anything, so a refused command changes nothing.
/// Errors are <see cref="BlockOptionException"/>s; the QMP layer's subclass turns them into its own error
/// type, with the same text. A reader made by <see cref="Check"/> knows its object's declaration, and a read of
/// a member the declaration does not list is a bug it reports at once (<see cref="InvalidOperationException"/>).
/// </summary>
public partial class OptionReader
{
    readonly JsonElement _arguments;
    readonly HashSet<string> _read = new(StringComparer.Ordinal);
    readonly string _prefix;

    readonly bool _keyval;

    /// <summary>The object's declaration, when this reader is checked against one.</summary>
    readonly QapiObject? _declared;

    /// <param name="arguments">The object.</param>
    /// <param name="prefix">How member names are reported (<c>file.</c> for a nested object).</param>
    /// <param name="keyval">Values come from the command line's key=value syntax: all are strings, and a
    /// member the schema types as a number or boolean is converted, as QEMU's keyval visitor does.</param>
    /// <param name="declared">The object's declaration: every read must name one of its members.</param>
    public OptionReader(JsonElement arguments, string prefix = "", bool keyval = false, QapiObject? declared = null)
    {
        _arguments = arguments;
        _prefix = prefix;
        _keyval = keyval;
        _declared = declared;
    }

    /// <summary>
    /// The member's value when it is given. JSON <c>null</c> counts as given: QAPI accepts it only where the
    /// schema says "OrNull" (read those with <see cref="IsExplicitNull"/> first), and every typed reader
    /// refuses it as the wrong type, in QEMU's words ("Invalid parameter type for 'size', expected: integer").
    /// </summary>
    bool TryGet(string name, out JsonElement value)
    {
        MarkRead(name);
        if (_arguments.ValueKind == JsonValueKind.Object && _arguments.TryGetProperty(name, out value))
        {
            return true;
        }

        value = default;
        return false;
    }

    /// <summary>
    /// The member is given as JSON <c>null</c> (QAPI's "OrNull" alternates, e.g. <c>"backing": null</c>), or,
    /// on a key=value command line, as an empty value.
    /// </summary>
    public bool IsExplicitNull(string name)
    {
        MarkRead(name);
        return _arguments.ValueKind == JsonValueKind.Object && _arguments.TryGetProperty(name, out var value) &&
            (value.ValueKind == JsonValueKind.Null || (_keyval && value.ValueKind == JsonValueKind.String && value.GetString()!.Length == 0));
    }

    /// <summary>How member names of this object are reported: empty at the top, <c>file.</c> inside <c>file</c>.</summary>
    public string Prefix => _prefix;

    string Full(string name) => _prefix + name;

    /// <summary>Values read from the command line's key=value syntax (all strings).</summary>
    public bool IsKeyVal => _keyval;

    /// <summary>The exception an option error is reported with; a protocol layer maps it to its own type.</summary>
    protected virtual Exception Error(string message) => new BlockOptionException(message);

    /// <summary>An option error in the caller's words, as the exception this reader reports errors with.</summary>
    public Exception Invalid(string message) => Error(message);

    /// <summary>Reads a nested object or list item with this reader's rules (and error type), checked against <paramref name="declared"/> when given.</summary>
    protected virtual OptionReader Create(JsonElement value, string prefix, QapiObject? declared) => new(value, prefix, _keyval, declared);

    Exception Missing(string name) => Invalid($"Parameter '{Full(name)}' is missing");

    Exception WrongType(string name, string expected) => WrongTypeAt(Full(name), expected);

    /// <summary>A wrong type at a place named in full (a list item: <c>enable[0]</c>).</summary>
    Exception WrongTypeAt(string fullName, string expected) => Invalid($"Invalid parameter type for '{fullName}', expected: {expected}");

    public string RequireString(string name) => OptionalString(name) ?? throw Missing(name);

    public string? OptionalString(string name)
    {
        if (!TryGet(name, out var value))
        {
            return null;
        }

        return value.ValueKind == JsonValueKind.String ? value.GetString()! : throw WrongType(name, "string");
    }

    public long RequireInt(string name) => OptionalInt(name) ?? throw Missing(name);

    public long? OptionalInt(string name)
    {
        if (!TryGet(name, out var value))
        {
            return null;
        }

        if (_keyval && value.ValueKind == JsonValueKind.String)
        {
            // On the command line an int is what C's strtoll reads in base 0, as QEMU's keyval visitor reads it:
            // decimal, 0x hex or 0 octal, signed; no size suffix (size=1M "expects integer"). A negative one is an
            // int to QAPI: the option's own check refuses it in its words.
            return TryParseCInteger(value.GetString()!, out var parsed) ? parsed : throw Invalid($"Parameter '{Full(name)}' expects integer");
        }

        return value.ValueKind == JsonValueKind.Number && value.TryGetInt64(out var number) ? number : throw WrongType(name, "integer");
    }

    /// <summary>
    /// An option QAPI types <c>int</c> and QEMU's driver then reads through QemuOpts as a size (raw's <c>offset</c> and
    /// <c>size</c>, qcow2's cache sizes): a negative value passes QAPI and is refused there, in its words.
    /// </summary>
    public long? OptionalOptsSize(string name)
    {
        var value = OptionalInt(name);
        return value is < 0 ? throw Invalid($"Parameter '{Full(name)}' expects a non-negative number below 2^64") : value;
    }

    /// <summary>A size or count that must not be negative (QAPI's uint64/size).</summary>
    public long? OptionalUnsigned(string name)
    {
        var value = OptionalInt(name);
        return value is < 0 ? throw Invalid($"Parameter '{Full(name)}' expects uint64") : value;
    }

    /// <summary>
    /// QAPI's <c>uint32</c>, as QEMU reads it: anything but an integer "expects uint64" (QEMU reads every
    /// unsigned type as a uint64 first, taking a negative number as its two's complement), then a value out
    /// of range "expects uint32_t".
    /// </summary>
    public uint? OptionalUInt32(string name)
    {
        var number = OptionalUInt64(name);
        return number is null or <= uint.MaxValue ? (uint?)number : throw Invalid($"Parameter '{Full(name)}' expects uint32_t");
    }

    /// <summary>
    /// QAPI's <c>uint64</c>, as QEMU reads it: an integer, a negative one taken as its two's complement
    /// (QEMU accepts those for backward compatibility); anything else "expects uint64".
    /// </summary>
    public ulong? OptionalUInt64(string name)
    {
        if (!TryGet(name, out var value))
        {
            return null;
        }

        ulong number = 0;
        var isInteger = value.ValueKind switch
        {
            JsonValueKind.Number => value.TryGetUInt64(out number) || TryGetTwosComplement(value, out number),
            JsonValueKind.String when _keyval => ulong.TryParse(value.GetString(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out number),
            _ => false,
        };
        return isInteger ? number : throw Invalid($"Parameter '{Full(name)}' expects uint64");
    }

    static bool TryGetTwosComplement(JsonElement value, out ulong number)
    {
        var ok = value.TryGetInt64(out var signed);
        number = unchecked((ulong)signed);
        return ok;
    }

    public bool? OptionalBool(string name)
    {
        if (!TryGet(name, out var value))
        {
            return null;
        }

        return value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            JsonValueKind.String when _keyval => value.GetString() switch
            {
                "on" or "yes" or "true" => true,
                "off" or "no" or "false" => false,
                _ => throw Invalid($"Parameter '{Full(name)}' expects 'on' or 'off'"),
            },
            _ => throw WrongType(name, "boolean"),
        };
    }

    /// <summary>
    /// An enum member: one of <paramref name="allowed"/>, as QAPI spells them. A value outside them is named
    /// without the object's prefix, as QEMU's visitor names it ("Parameter 'aio' does not accept value", also
    /// inside <c>file</c>).
    /// </summary>
    public string? OptionalEnum(string name, params IReadOnlyList<string> allowed)
    {
        var value = OptionalString(name);
        return value is null || allowed.Contains(value, StringComparer.Ordinal)
            ? value
            : throw Invalid($"Parameter '{name}' does not accept value '{value}'");
    }

    /// <summary>A nested object, read with the same rules; its member names are reported as <c>name.member</c>.</summary>
    public virtual OptionReader? OptionalObject(string name)
    {
        if (!TryGet(name, out var value))
        {
            return null;
        }

        return value.ValueKind == JsonValueKind.Object ? Create(value, Full(name) + ".", DeclaredObject(name)) : throw WrongType(name, "object");
    }

    /// <summary>The raw value of a member whose type depends on its content (an alternate, e.g. a node reference or inline options).</summary>
    public JsonElement? OptionalRaw(string name) => TryGet(name, out var value) ? value : null;

    /// <summary>A nested object or element read with this object's rules (for list items), checked against <paramref name="declared"/> when given.</summary>
    public virtual OptionReader Nested(JsonElement value, string prefix, QapiObject? declared = null) => Create(value, prefix, declared);

    /// <summary>An integer as strtoll(text, &amp;end, 0) reads the whole of it: leading white space, a sign, then 0x hex, 0 octal or decimal.</summary>
    static bool TryParseCInteger(string text, out long number)
    {
        number = 0;
        var span = text.AsSpan().TrimStart(" \t\n\v\f\r");
        var negative = span.Length > 0 && span[0] == '-';
        if (span.Length > 0 && span[0] is '-' or '+')
        {
            span = span[1..];
        }

        var style = span.Length > 2 && span[0] == '0' && span[1] is 'x' or 'X' ? 16 : span.Length > 1 && span[0] == '0' ? 8 : 10;
        var digits = style switch { 16 => span[2..], 8 => span[1..], _ => span };
        if (digits.IsEmpty)
        {
            return false;
        }

        ulong magnitude = 0;
        foreach (var c in digits)
        {
            var digit = c is >= '0' and <= '9' ? c - '0' : c is >= 'a' and <= 'f' ? c - 'a' + 10 : c is >= 'A' and <= 'F' ? c - 'A' + 10 : 99;
            if (digit >= style || magnitude > (ulong.MaxValue - (ulong)digit) / (ulong)style)
            {
                return false;
            }

            magnitude = magnitude * (ulong)style + (ulong)digit;
        }

        if (magnitude > (negative ? 1UL << 63 : long.MaxValue))
        {
            return false;
        }

        number = negative ? unchecked(-(long)magnitude) : (long)magnitude;
        return true;
    }


    /// <summary>Marks members as read on purpose without using them (accepted and ignored).</summary>
    public void Accept(params string[] names)
    {
        foreach (var name in names)
        {
            MarkRead(name);
        }
    }

    /// <summary>Refuses the first member no one asked for, as QAPI's visit_check_struct does.</summary>
    public void CheckNoneUnexpected()
    {
        if (_arguments.ValueKind != JsonValueKind.Object)
        {
            return;
        }

        foreach (var property in _arguments.EnumerateObject())
        {
            if (!_read.Contains(property.Name))
            {
                throw Invalid($"Parameter '{Full(property.Name)}' is unexpected");
            }
        }
    }
}
