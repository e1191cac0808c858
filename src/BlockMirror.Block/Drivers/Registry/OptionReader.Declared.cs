using System.Text.Json;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Block.Drivers.Registry;

/// <summary>
/// Reading against a declaration (<see cref="QapiObject"/>): <see cref="Check"/> refuses what the declaration
/// does not accept before anyone acts on it, in QEMU's visitor order and words, and the reader it returns
/// refuses, as a bug, any read of a member the declaration does not list. Together they keep a command's
/// declaration (what query-qmp-schema lists) and what its handler reads the same.
/// </summary>
public partial class OptionReader
{
    void MarkRead(string name)
    {
        if (_declared is not null && _declared.FindMember(name, _arguments) is null)
        {
            throw new InvalidOperationException($"'{Full(name)}' is read, but the declaration of {_declared.Name} does not list it");
        }

        _read.Add(name);
    }

    /// <summary>The declared type of a member that is an object (or an alternate with an object branch).</summary>
    QapiObject? DeclaredObject(string name) => _declared?.FindMember(name, _arguments)?.Type switch
    {
        QapiObject type => type,
        QapiAlternate alternate => alternate.ObjectBranch,
        _ => null,
    };

    /// <summary>
    /// Checks the object against <paramref name="type"/> as QEMU's QAPI input visitor does: each member in
    /// declaration order (missing, wrong type, value not in its enum; nested objects and list items likewise,
    /// each nested object's unexpected members when its own members are done), a union's variant after its base,
    /// then members the type does not have ("Parameter 'x' is unexpected"). Returns a fresh reader of the same
    /// object for the handler, whose reads are held to the declaration.
    /// </summary>
    public virtual OptionReader Check(QapiObject type)
    {
        Validate(type);
        return Create(_arguments, _prefix, type);
    }

    void Validate(QapiObject type)
    {
        if (ValidateMembers(type))
        {
            CheckNoneUnexpected();
        }
    }

    /// <summary>Checks the members; false when a union's tag names no variant (the handler refuses it).</summary>
    bool ValidateMembers(QapiObject type)
    {
        foreach (var member in type.Members)
        {
            if (_arguments.ValueKind != JsonValueKind.Object || !_arguments.TryGetProperty(member.Name, out _))
            {
                if (!member.Optional)
                {
                    throw Missing(member.Name);
                }

                continue;
            }

            ValidateMember(member.Name, member.Type);
        }

        if (type.Tag is not { } tag || OptionalString(tag) is not { } value)
        {
            return true;
        }

        return type.Variant(value) is { } variant && ValidateMembers(variant);
    }

    void ValidateMember(string name, QapiType type)
    {
        switch (type)
        {
            case QapiEnum enumeration:
                OptionalEnum(name, enumeration.Values);
                break;
            case QapiObject nested:
                OptionalObject(name)!.Validate(nested);
                break;
            case QapiArray array:
                foreach (var (item, label) in OptionalList(name)!)
                {
                    ValidateItem(item, label, array.Element);
                }

                break;
            case QapiAlternate alternate:
                TryGet(name, out var value);
                ValidateAlternate(value, Full(name), name, alternate);
                break;
            case QapiBuiltin builtin:
                ValidateBuiltin(name, builtin);
                break;
        }
    }

    void ValidateBuiltin(string name, QapiBuiltin builtin)
    {
        if (builtin == QapiBuiltin.Str)
        {
            OptionalString(name);
        }
        else if (builtin == QapiBuiltin.Int)
        {
            OptionalInt(name);
        }
        else if (builtin == QapiBuiltin.UInt32)
        {
            OptionalUInt32(name);
        }
        else if (builtin == QapiBuiltin.UInt64)
        {
            // QEMU's uint64 visitor refuses a value that is no number in its own words, not as a wrong type.
            if (TryGet(name, out var number) && number.ValueKind != JsonValueKind.Number && !(_keyval && number.ValueKind == JsonValueKind.String))
            {
                throw Invalid($"Parameter '{Full(name)}' expects uint64");
            }

            OptionalUnsigned(name);
        }
        else if (builtin == QapiBuiltin.Size)
        {
            // As QEMU's visitor reads uint64 and size: any integer up to 2^64-1, a negative one as its two's
            // complement, anything else "expects uint64". (UInt64 members here are ones QEMU types int and
            // whose handlers refuse negative values; they keep OptionalUnsigned's checks.)
            OptionalUInt64(name);
        }
        else if (builtin == QapiBuiltin.Bool)
        {
            OptionalBool(name);
        }
        else if (TryGet(name, out var value) && !Matches(value, builtin))
        {
            throw WrongType(name, builtin.Name);
        }
    }

    /// <summary>
    /// A list item (<paramref name="label"/>: <c>enable[0]</c>, on the command line <c>inject-error.0</c>). QEMU
    /// names a list item's enum value and alternate type 'null' (its visitor has no name for them there).
    /// </summary>
    void ValidateItem(JsonElement item, string label, QapiType type)
    {
        switch (type)
        {
            case QapiObject nested:
                (item.ValueKind == JsonValueKind.Object ? Create(item, label + ".", null) : throw WrongTypeAt(label, "object")).Validate(nested);
                break;
            case QapiEnum enumeration:
                CheckEnumValue(item.ValueKind == JsonValueKind.String ? item.GetString()! : throw WrongTypeAt(label, "string"), "null", enumeration);
                break;
            case QapiAlternate alternate:
                ValidateAlternate(item, label, "null", alternate);
                break;
            case QapiBuiltin builtin when !Matches(item, builtin):
                throw WrongTypeAt(label, builtin == QapiBuiltin.Str ? "string" : builtin == QapiBuiltin.Bool ? "boolean" : builtin.JsonType == "int" ? "integer" : builtin.Name);
        }
    }

    void ValidateAlternate(JsonElement value, string fullName, string name, QapiAlternate alternate)
    {
        var branch = alternate.Branches.FirstOrDefault(b => b switch
        {
            QapiObject => value.ValueKind == JsonValueKind.Object,
            QapiEnum => value.ValueKind == JsonValueKind.String,
            QapiArray => value.ValueKind == JsonValueKind.Array,
            QapiBuiltin builtin => Matches(value, builtin),
            _ => false,
        });
        switch (branch)
        {
            case null:
                // QEMU's generated visitor names an alternate by its bare name, also inside an object (blockdev-create's 'file').
                throw WrongTypeAt(name, alternate.Name);
            case QapiObject nested:
                Create(value, fullName + ".", null).Validate(nested);
                break;
            case QapiEnum enumeration:
                CheckEnumValue(value.GetString()!, name, enumeration);
                break;
        }
    }

    void CheckEnumValue(string value, string name, QapiEnum enumeration)
    {
        if (!enumeration.Contains(value))
        {
            throw Invalid($"Parameter '{name}' does not accept value '{value}'");
        }
    }

    /// <summary>Whether a value has a builtin's JSON type; on the command line every scalar is a string.</summary>
    bool Matches(JsonElement value, QapiBuiltin builtin)
    {
        if (builtin == QapiBuiltin.Any)
        {
            return true;
        }

        if (builtin == QapiBuiltin.Null)
        {
            return value.ValueKind == JsonValueKind.Null || (_keyval && value.ValueKind == JsonValueKind.String && value.GetString()!.Length == 0);
        }

        if (_keyval && value.ValueKind == JsonValueKind.String)
        {
            return true;
        }

        return builtin.JsonType switch
        {
            "string" => value.ValueKind == JsonValueKind.String,
            "boolean" => value.ValueKind is JsonValueKind.True or JsonValueKind.False,
            "int" => value.ValueKind == JsonValueKind.Number && (value.TryGetInt64(out _) || value.TryGetUInt64(out _)),
            "number" => value.ValueKind == JsonValueKind.Number,
            _ => false,
        };
    }

    /// <summary>
    /// A list member as QAPI reads it: a JSON array (items named <c>name[i]</c>), or on the command line
    /// <c>name.0.*</c>, <c>name.1.*</c> (items named <c>name.i</c>; every index from 0 up must be there, as
    /// QEMU's keyval requires). Each item's name includes this object's prefix. Null when absent.
    /// </summary>
    public IReadOnlyList<(JsonElement Item, string Label)>? OptionalList(string name)
    {
        if (!TryGet(name, out var value))
        {
            return null;
        }

        var items = new List<(JsonElement, string)>();
        if (value.ValueKind == JsonValueKind.Array)
        {
            var index = 0;
            foreach (var item in value.EnumerateArray())
            {
                items.Add((item, $"{Full(name)}[{index++}]"));
            }

            return items;
        }

        if (value.ValueKind == JsonValueKind.Object && _keyval && value.EnumerateObject().All(p => IsIndex(p.Name)))
        {
            var count = value.EnumerateObject().Count();
            for (var i = 0; i < count; i++)
            {
                var key = i.ToString(System.Globalization.CultureInfo.InvariantCulture);
                items.Add(value.TryGetProperty(key, out var item) ? (item, $"{Full(name)}.{key}") : throw Invalid($"Parameter '{Full(name)}.{key}' missing"));
            }

            return items;
        }

        throw WrongType(name, "array");
    }

    static bool IsIndex(string key) => key.Length > 0 && key.All(char.IsAsciiDigit) && (key == "0" || key[0] != '0');
}
