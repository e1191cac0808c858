namespace BlockMirror.Block.Qapi;

/// <summary>A QAPI list of <see cref="Element"/>.</summary>
public sealed class QapiArray(QapiType element) : QapiType("[" + element.Name + "]")
{
    public QapiType Element { get; } = element;
}
