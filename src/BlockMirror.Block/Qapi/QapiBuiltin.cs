namespace BlockMirror.Block.Qapi;

/// <summary>
/// QAPI's builtin scalars. Each integer type is checked with its own range rules (QEMU's words: <c>expects
/// uint64</c>, <c>expects uint32_t</c>), but introspection names every one of them <c>int</c>, as QEMU does.
/// </summary>
public sealed class QapiBuiltin : QapiType
{
    QapiBuiltin(string name, string schemaName, string jsonType) : base(name)
    {
        SchemaName = schemaName;
        JsonType = jsonType;
    }

    /// <summary>The name query-qmp-schema lists it under (<c>int</c> for every integer type).</summary>
    public string SchemaName { get; }

    /// <summary>SchemaInfoBuiltin's <c>json-type</c>.</summary>
    public string JsonType { get; }

    public static QapiBuiltin Str { get; } = new("str", "str", "string");

    /// <summary>A signed 64-bit integer (QAPI's <c>int</c>, <c>int64</c>).</summary>
    public static QapiBuiltin Int { get; } = new("int", "int", "int");

    /// <summary>An unsigned 32-bit integer.</summary>
    public static QapiBuiltin UInt32 { get; } = new("uint32", "int", "int");

    /// <summary>An unsigned 64-bit integer (QAPI's <c>uint64</c>); read as a non-negative <see cref="long"/>.</summary>
    public static QapiBuiltin UInt64 { get; } = new("uint64", "int", "int");

    /// <summary>A byte count (QAPI's <c>size</c>): on the command line it takes suffixes (<c>1G</c>).</summary>
    public static QapiBuiltin Size { get; } = new("size", "int", "int");

    public static QapiBuiltin Bool { get; } = new("bool", "bool", "boolean");

    public static QapiBuiltin Number { get; } = new("number", "number", "number");

    /// <summary>Any JSON value; its content is the handler's to check.</summary>
    public static QapiBuiltin Any { get; } = new("any", "any", "value");

    /// <summary>JSON null, as a branch of an alternate (<c>BlockdevRefOrNull</c>).</summary>
    public static QapiBuiltin Null { get; } = new("null", "null", "null");
}
