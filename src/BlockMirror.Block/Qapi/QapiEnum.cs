namespace BlockMirror.Block.Qapi;

/// <summary>A QAPI enum: a string that must be one of <see cref="Values"/> (otherwise QEMU's "Parameter 'x' does not accept value 'y'").</summary>
public sealed class QapiEnum : QapiType
{
    readonly Func<IReadOnlyList<string>> _values;

    public QapiEnum(string name, IReadOnlyList<string> values) : base(name) => _values = () => values;

    /// <summary>An enum whose values are read when needed (blockdev-add's drivers, a list that grows at start-up).</summary>
    public QapiEnum(string name, Func<IReadOnlyList<string>> values) : base(name) => _values = values;

    public IReadOnlyList<string> Values => _values();

    public bool Contains(string value) => Values.Contains(value, StringComparer.Ordinal);
}
