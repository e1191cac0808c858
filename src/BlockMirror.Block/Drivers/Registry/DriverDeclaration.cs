using BlockMirror.Block.Qapi;

namespace BlockMirror.Block.Drivers.Registry;

/// <summary>
/// Reads a driver's own options (QEMU's <c>BlockdevOptions&lt;Driver&gt;</c> members; the members every
/// node has are read by the registry first) and returns how to open the node. Everything is checked here,
/// before the first node opens, so refused options open nothing.
/// </summary>
public delegate NodeOpener DriverOptionsReader(NodeOptions node);

/// <summary>
/// Writes, as blockdev-add members, the driver's options a file name it claims stands for (QEMU's
/// bdrv_parse_filename: <c>nbd://host/export</c> becomes <c>server</c> and <c>export</c>). Throws a
/// <see cref="BlockOpenException"/> in QEMU's words for a name it refuses; writes nothing then.
/// </summary>
public delegate void FileNameParser(string fileName, System.Text.Json.Utf8JsonWriter options);

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

    /// <summary>
    /// The prefixes of the file names this driver opens (QEMU's <c>protocol_name</c>: <c>file</c> for
    /// <c>file:PATH</c>, <c>nbd</c> for <c>nbd://...</c>); each needs <see cref="ParseFileName"/>.
    /// </summary>
    public IReadOnlyList<string> Protocols { get; init; } = [];

    /// <summary>
    /// The driver's own members (QEMU's <c>BlockdevOptions&lt;Driver&gt;</c>): blockdev-add's variant for this
    /// driver. blockdev-add checks options against it before <see cref="Read"/> runs, and <see cref="Read"/>
    /// may read only what it lists.
    /// </summary>
    public QapiObject Options { get; init; } = QapiObject.Empty;

    /// <summary>Reads a file name with one of <see cref="Protocols"/> into the driver's options.</summary>
    public FileNameParser? ParseFileName { get; init; }
}
