using BlockMirror.Block.Drivers.Registry;

namespace BlockMirror.Nbd.Client;

/// <summary>Adds the drivers of this assembly to the driver registry; the program's entry points call it once at start-up.</summary>
public static class NbdDrivers
{
    public static void Register() => DriverRegistry.Add(NbdDeclaration.Driver);
}
