namespace BlockMirror.Block.Qapi;

/// <summary>
/// A type of QEMU's QAPI schema (qapi/introspect.json's meta-types): a builtin scalar, an enum, an object
/// (a struct, or a flat union on a tag member), an array, an alternate. Commands declare their arguments with
/// these, and the same declaration both checks what a client sends (<see cref="Drivers.Registry.OptionReader.Check"/>)
/// and is listed by <c>query-qmp-schema</c>, so the schema cannot say other than what is accepted.
/// </summary>
public abstract class QapiType
{
    private protected QapiType(string name) => Name = name;

    /// <summary>QAPI's name (<c>str</c>, <c>BlockdevOptionsFile</c>); named in "expected: ..." errors of alternates.</summary>
    public string Name { get; }

    public override string ToString() => Name;
}
