package org.edgecpm.demo.core;

/** What settings are chosen from: a phone profile shipped in the bundle, or the live phone. */
public final class DeviceInfo {
    public final String name;
    public final long memoryBudgetBytes;
    public final int threads;

    public DeviceInfo(String name, long memoryBudgetBytes, int threads) {
        this.name = name;
        this.memoryBudgetBytes = memoryBudgetBytes;
        this.threads = threads;
    }

    public static DeviceInfo fromProfile(BundleManifest.PhoneProfile p) {
        return new DeviceInfo(p.name, p.memoryBudgetBytes, p.threads);
    }
}
