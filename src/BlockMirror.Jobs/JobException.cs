namespace BlockMirror.Jobs;

/// <summary>
/// A refused job request: a verb in the wrong state, a bad argument, an unknown job. Nothing about the
/// job changed. QMP reports it as a GenericError (or DeviceNotFound when <see cref="NotFound"/>).
/// </summary>
public sealed class JobException(string message, bool notFound = false) : InvalidOperationException(message)
{
    public bool NotFound { get; } = notFound;
}
