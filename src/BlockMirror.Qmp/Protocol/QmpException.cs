namespace BlockMirror.Qmp.Protocol;

/// <summary>
/// A command's failure as QMP reports it: <c>{"error": {"class": CLASS, "desc": TEXT}}</c>. The classes are
/// QEMU's (qapi/error.json): almost everything is GenericError; a missing node, device or job is
/// DeviceNotFound; an unknown command is CommandNotFound.
/// </summary>
public sealed class QmpException(string errorClass, string description) : Exception(description)
{
    public const string GenericError = "GenericError";
    public const string CommandNotFound = "CommandNotFound";
    public const string DeviceNotFound = "DeviceNotFound";

    public string ErrorClass { get; } = errorClass;

    public static QmpException Generic(string description) => new(GenericError, description);
}
