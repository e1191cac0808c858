namespace BlockMirror.Block.Drivers.Registry;

/// <summary>
/// Options refused before anything was opened: an unknown member, a wrong type, a value out of range,
/// worded as QEMU words them ("Parameter 'foo' is unexpected").
/// </summary>
/// QMP reports every one of them as GenericError.
public sealed class BlockOptionException(string message) : Exception(message);
