namespace BlockMirror.Block.Graph;

/// <summary>
/// Something that holds an edge to a node: another node (a child edge), or a user of the graph such as
/// an export, a job or a command-line tool (a root edge, QEMU's BlockBackend).
/// </summary>
public interface IEdgeParent
{
    /// <summary>How errors and query commands name this parent, e.g. <c>node 'disk'</c> or <c>export 'exp0'</c>.</summary>
    string ParentDescription { get; }
}

/// <summary>A plain named root parent, for tools and tests that need nothing more than a description.</summary>
public sealed class RootParent(string description) : IEdgeParent
{
    public string ParentDescription { get; } = description;

    public override string ToString() => ParentDescription;
}
