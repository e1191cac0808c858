namespace BlockMirror.Block.Qapi;

/// <summary>
/// A QAPI alternate: a value whose JSON type picks the branch (<c>BlockdevRef</c>: a node name or inline
/// options). At most one branch per JSON type; a value no branch takes is "expected: <see cref="QapiType.Name"/>".
/// </summary>
public sealed class QapiAlternate(string name, params QapiType[] branches) : QapiType(name)
{
    public IReadOnlyList<QapiType> Branches { get; } = branches;

    /// <summary>The object branch, if any (what a nested reader of this member reads).</summary>
    public QapiObject? ObjectBranch => Branches.OfType<QapiObject>().FirstOrDefault();
}
