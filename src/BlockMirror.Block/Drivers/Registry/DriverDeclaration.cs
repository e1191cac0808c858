namespace BlockMirror.Block.Drivers.Registry;

/// <summary>
/// Reads a driver's own options (QEMU's <c>BlockdevOptions&lt;Driver&gt;</c> members; the members every
/// node has are read by the registry first) and returns how to open the node. Everything is checked here,
/// before the first node opens, so refused options open nothing.
/// </summary>
public delegate NodeOpener DriverOptionsReader(NodeOptions node);

/// <summary>
/// Everything about one driver, in one place: its QEMU name, where it sits in a stack, whether
/// <c>blockdev-add</c> offers it, and its option schema with how it opens (<see cref="Read"/>). What an
/// open node can do is its driver's <see cref="DriverCapabilities"/> and the optional capability
/// interfaces it implements (<see cref="IBackingFileFormat"/>, <see cref="IReopenableDriver"/>).
/// </summary>
/// <param name="Name">QAPI's BlockdevDriver name.</param>
/// <param name="Kind">Protocol, format or filter; the formats are the ones image files are opened as.</param>
/// <param name="Read">Reads the driver's options into an opener.</param>
public sealed record DriverDeclaration(string Name, DriverKind Kind, DriverOptionsReader Read)
{
    /// <summary>False for drivers QEMU does not have (memory): only code opens them, never blockdev-add.</summary>
    public bool Offered { get; init; } = true;
}
