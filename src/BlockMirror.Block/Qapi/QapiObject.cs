using System.Text.Json;

namespace BlockMirror.Block.Qapi;

/// <summary>
/// A QAPI object: its members in declaration order (the order QEMU's visitor checks them in, so the first
/// error reported is QEMU's), and for a flat union the tag member (one of <see cref="Members"/>, an enum) whose
/// value selects the variant that adds more members. A tag value with no variant is one the command refuses
/// by name (an object type or export type that is not implemented): the check stops after the base members and
/// leaves the refusal, in its own words, to the handler.
/// </summary>
/// <remarks>
/// Declare one with QAPI's notation, a leading <c>*</c> for optional members:
/// <c>new QapiObject("BlockJobSetSpeedArgs", ("device", QapiBuiltin.Str), ("*speed", QapiBuiltin.Int))</c>.
/// </remarks>
public sealed class QapiObject : QapiType
{
    readonly Func<IReadOnlyList<QapiVariant>>? _variants;

    public QapiObject(string name, params QapiMember[] members) : base(name) => Members = members;

    QapiObject(string name, List<QapiMember> members) : base(name) => Members = members;

    /// <summary>
    /// A struct whose members include itself (BlockStats' <c>parent</c> and <c>backing</c>): <paramref name="members"/>
    /// is given the type being declared.
    /// </summary>
    public static QapiObject Recursive(string name, Func<QapiObject, QapiMember[]> members)
    {
        var list = new List<QapiMember>();
        var type = new QapiObject(name, list);
        list.AddRange(members(type));
        return type;
    }

    QapiObject(string name, QapiMember[] members, string tag, Func<IReadOnlyList<QapiVariant>> variants) : base(name)
    {
        Members = members;
        if (!members.Any(m => m.Name == tag && m.Type is QapiEnum))
        {
            throw new ArgumentException($"union {name}: the tag '{tag}' must be an enum member of its base", nameof(tag));
        }

        Tag = tag;
        _variants = variants;
    }

    /// <summary>A flat union whose variants are known when it is declared.</summary>
    public static QapiObject Union(string name, QapiMember[] members, string tag, params QapiVariant[] variants) => new(name, members, tag, () => variants);

    /// <summary>
    /// A flat union whose variants are read when needed: a registry that grows at start-up (blockdev-add's
    /// drivers), or a type that contains itself (BlockdevOptions inside BlockdevRef).
    /// </summary>
    public static QapiObject Union(string name, QapiMember[] members, string tag, Func<IReadOnlyList<QapiVariant>> variants) => new(name, members, tag, variants);

    /// <summary>An object with no members: the arguments of a command that takes none, the return of one that answers <c>{}</c>.</summary>
    public static QapiObject Empty { get; } = new("q_empty");

    public IReadOnlyList<QapiMember> Members { get; }

    /// <summary>The union's tag member, null for a plain struct.</summary>
    public string? Tag { get; }

    public IReadOnlyList<QapiVariant> Variants => _variants?.Invoke() ?? [];

    /// <summary>The variant for a tag value, null when the value has none.</summary>
    public QapiObject? Variant(string tagValue) => Variants.FirstOrDefault(v => v.Case == tagValue)?.Type;

    /// <summary>
    /// The member named <paramref name="name"/> that <paramref name="value"/> may hold: a base member, or one of
    /// the variant its tag selects. While the tag is absent or not a string, a member of any variant.
    /// </summary>
    public QapiMember? FindMember(string name, JsonElement value)
    {
        foreach (var member in Members)
        {
            if (member.Name == name)
            {
                return member;
            }
        }

        if (Tag is null)
        {
            return null;
        }

        IEnumerable<QapiVariant> candidates = Variants;
        if (value.ValueKind == JsonValueKind.Object && value.TryGetProperty(Tag, out var tag) && tag.ValueKind == JsonValueKind.String)
        {
            candidates = candidates.Where(v => v.Case == tag.GetString());
        }

        return candidates.SelectMany(v => v.Type.Members).FirstOrDefault(m => m.Name == name);
    }
}
