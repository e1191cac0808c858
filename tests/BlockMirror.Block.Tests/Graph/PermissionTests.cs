using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Graph;

/// <summary>
/// The permission model: what a user takes must be shared by every other user of the node, a child edge takes
/// what its role says, a refused change leaves the graph as it was, and the file driver's image locks follow
/// (seen by a second node on the same file, which is another open file description, as another process is).
/// </summary>
public sealed class PermissionTests : IDisposable
{
    const BlockPermissions Read = BlockPermissions.ConsistentRead;
    const BlockPermissions Write = BlockPermissions.Write;
    const BlockPermissions JobShares = BlockPermissions.WriteUnchanged;

    readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    static string Conflict(string node, string permissions, string requiredBy, string requiredRole, string unsharedBy, string unsharedRole) =>
        $"Permission conflict on node '{node}': permissions '{permissions}' are both required by {requiredBy} (uses node '{node}' as '{requiredRole}' child) " +
        $"and unshared by {unsharedBy} (uses node '{node}' as '{unsharedRole}' child).";

    [Fact]
    public async Task A_user_that_takes_what_another_does_not_share_is_refused_in_qemus_words_and_nothing_changes()
    {
        await using var graph = new BlockGraph();
        var node = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(1 << 20));
        var job = graph.AttachRoot(node, new RootParent("job"), "target", Write, JobShares);

        var writer = Assert.Throws<BlockGraphException>(() => graph.AttachRoot(node, new RootParent("export"), "export", Read | Write));
        var reader = Assert.Throws<BlockGraphException>(() => graph.AttachRoot(node, new RootParent("export"), "export", Read));

        const string User = "an unnamed block device";
        Assert.Equal(Conflict("disk", "consistent read, write", User, "root", User, "root"), writer.Message);
        Assert.Equal(Conflict("disk", "consistent read", User, "root", User, "root"), reader.Message);
        Assert.Equal([job], node.Parents);

        // A user that shares nothing is refused too, the other way round; one that takes nothing is not.
        Assert.Throws<BlockGraphException>(() => graph.AttachRoot(node, new RootParent("x"), "root", BlockPermissions.None, BlockPermissions.None));
        graph.AttachRoot(node, new RootParent("idle"), "root", BlockPermissions.None, BlockPermissions.All);

        // Once the job lets go, the writer is welcome.
        graph.SetPermissions(job, BlockPermissions.None, BlockPermissions.All);
        graph.AttachRoot(node, new RootParent("export"), "export", Read | Write);
    }

    [Fact]
    public async Task A_retarget_that_would_conflict_is_refused_and_every_edge_stays_where_it_was()
    {
        await using var graph = new BlockGraph();
        var a = await MemoryDriver.OpenAsync(graph, "a", new MemoryDriverOptions(1 << 20));
        var b = await MemoryDriver.OpenAsync(graph, "b", new MemoryDriverOptions(1 << 20));
        var user = graph.AttachRoot(a, new RootParent("guest"), "root", Read | Write);
        graph.AttachRoot(b, new RootParent("job"), "target", Write, JobShares);

        Assert.Throws<BlockGraphException>(() => graph.ReplaceNode(a, b));
        Assert.Throws<BlockGraphException>(() => graph.ReplaceChild(user, b));

        Assert.Same(a, user.Node);
        Assert.Equal([user], a.Parents);
        Assert.Single(b.Parents);
    }

    [Fact]
    public async Task A_format_takes_write_and_resize_on_its_file_whenever_it_is_writable_and_lets_nobody_else_write_it()
    {
        await using var graph = new BlockGraph();
        var path = _dir.File("disk.qcow2");
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = 1 << 20 });
        var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2", NodeName: "disk"));
        var file = node.File!;

        Assert.Equal(Read | Write | BlockPermissions.Resize, file.Permissions);
        Assert.Equal(Read | BlockPermissions.WriteUnchanged, file.SharedPermissions);
        var refused = Assert.Throws<BlockGraphException>(() => graph.AttachRoot(file.Node, new RootParent("x"), "root", Read | Write));
        Assert.Equal(Conflict(file.Node.Name, "write", "an unnamed block device", "root", "node 'disk'", "file"), refused.Message);

        // Read-only, it only reads its file, and still lets nobody write under its metadata.
        await graph.ReopenAsync(node, readOnly: true);
        Assert.Equal(Read, file.Permissions);
        Assert.Equal(Read | BlockPermissions.WriteUnchanged, file.SharedPermissions);
    }

    [Fact]
    public async Task A_second_node_on_a_locked_file_is_refused_with_qemus_lock_message_unless_locking_is_off()
    {
        var path = _dir.File("disk.qcow2");
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = 1 << 20 });
        await using var holder = new BlockGraph();
        await ImageFiles.OpenAsync(holder, new ImageOpenOptions(path, "qcow2"));

        await using var other = new BlockGraph();
        var reader = await Assert.ThrowsAsync<BlockGraphException>(async () => await ImageFiles.OpenAsync(other, new ImageOpenOptions(path, "qcow2", ReadOnly: true)));
        var writer = await Assert.ThrowsAsync<BlockGraphException>(async () => await ImageFiles.OpenAsync(other, new ImageOpenOptions(path, "qcow2")));

        Assert.Equal($"Could not open '{path}': Failed to get shared \"write\" lock", reader.Message);
        Assert.Equal($"Could not open '{path}': Failed to get \"write\" lock", writer.Message);
        Assert.Equal($"Is another process using the image [{path}]?", reader.Hint);
        Assert.Empty(other.Nodes);

        // -U reads it anyway; locking=off neither checks nor takes anything.
        await ImageFiles.OpenAsync(other, new ImageOpenOptions(path, "qcow2", ReadOnly: true, ForceShare: true));
        var unlocked = await FileDriver.OpenAsync(other, "unlocked", new FileDriverOptions(path, Locking: FileLockingMode.Off));
        await Qcow2Driver.OpenAsync(other, "q", unlocked);
    }

    [Fact]
    public async Task The_locks_follow_a_reopen_and_go_with_the_node()
    {
        var path = _dir.File("disk.qcow2");
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = 1 << 20 });
        await using var holder = new BlockGraph();
        var node = await ImageFiles.OpenAsync(holder, new ImageOpenOptions(path, "qcow2", ReadOnly: true));

        // Read-only, it shares reading: another reader is welcome.
        await using (var reader = new BlockGraph())
        {
            await ImageFiles.OpenAsync(reader, new ImageOpenOptions(path, "qcow2", ReadOnly: true));
        }

        // Read-write (a new descriptor), it takes write: another reader is refused.
        await holder.ReopenAsync(node, readOnly: false);
        await using (var reader = new BlockGraph())
        {
            await Assert.ThrowsAsync<BlockGraphException>(async () => await ImageFiles.OpenAsync(reader, new ImageOpenOptions(path, "qcow2", ReadOnly: true)));
        }

        // Gone, it holds nothing.
        await holder.RemoveNodeAsync(node);
        await using (var writer = new BlockGraph())
        {
            await ImageFiles.OpenAsync(writer, new ImageOpenOptions(path, "qcow2"));
        }
    }

    [Fact]
    public async Task A_reopen_read_write_refused_by_another_users_lock_is_undone()
    {
        var path = _dir.File("disk.qcow2");
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = 1 << 20 });
        await using var holder = new BlockGraph();
        var node = await ImageFiles.OpenAsync(holder, new ImageOpenOptions(path, "qcow2", ReadOnly: true));
        await using var reader = new BlockGraph();
        await ImageFiles.OpenAsync(reader, new ImageOpenOptions(path, "qcow2", ReadOnly: true));

        var refused = await Assert.ThrowsAsync<BlockGraphException>(async () => await holder.ReopenAsync(node, readOnly: false));

        Assert.Equal("Failed to get \"write\" lock", refused.Message);
        Assert.True(node.ReadOnly);
        Assert.Equal(Read, node.File!.Permissions);
    }
}
