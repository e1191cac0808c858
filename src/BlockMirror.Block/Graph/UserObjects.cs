using System.Collections.Concurrent;

namespace BlockMirror.Block.Graph;

/// <summary>
/// QEMU's <c>/objects</c> container: the objects a user created by id (<c>object-add</c>, <c>--object</c>), such
/// as TLS credentials, which nodes and servers look up by the id an option names (<c>tls-creds=ID</c>). The
/// store is generic: what an object is belongs to the layer that made it, and a user looks it up by type.
/// An object deleted while in use stays alive for its users (they hold a reference), as in QEMU.
/// </summary>
public sealed class UserObjects
{
    readonly ConcurrentDictionary<string, object> _objects = new(StringComparer.Ordinal);

    /// <summary>Adds <paramref name="value"/> under <paramref name="id"/>; false when the id is taken.</summary>
    public bool TryAdd(string id, object value) => _objects.TryAdd(id, value);

    /// <summary>The object with this id, or null.</summary>
    public object? Find(string id) => _objects.TryGetValue(id, out var value) ? value : null;

    /// <summary>Removes the object with this id; false when there is none.</summary>
    public bool Remove(string id) => _objects.TryRemove(id, out _);

    /// <summary>The ids in use, in no particular order.</summary>
    public IEnumerable<string> Ids => _objects.Keys;
}
