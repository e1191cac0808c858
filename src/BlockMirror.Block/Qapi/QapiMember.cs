namespace BlockMirror.Block.Qapi;

/// <summary>One member of an object type: its name, its type, and whether it may be left out.</summary>
public sealed record QapiMember(string Name, QapiType Type, bool Optional)
{
    /// <summary>A member in QAPI's own notation: <c>"*speed"</c> is optional, <c>"device"</c> required.</summary>
    public static QapiMember Of(string name, QapiType type) =>
        name.StartsWith('*') ? new(name[1..], type, true) : new(name, type, false);

    public static implicit operator QapiMember((string Name, QapiType Type) member) => Of(member.Name, member.Type);
}
