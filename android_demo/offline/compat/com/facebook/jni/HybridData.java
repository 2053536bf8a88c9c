package com.facebook.jni;

/**
 * Offline-build stand-in for fbjni's HybridData (Gradle builds use com.facebook.fbjni from Maven). The class,
 * field and method names are the ones libfbjni.so looks up: mDestructor, Destructor.mNativePointer and the
 * native Destructor.deleteNative it registers.
 */
public class HybridData {
    private final Destructor mDestructor = new Destructor(this);

    public synchronized void resetNative() {
        mDestructor.destruct();
    }

    public boolean isValid() {
        return mDestructor.mNativePointer != 0;
    }

    public static class Destructor {
        private long mNativePointer;
        private final Object mOwner;

        Destructor(Object owner) {
            mOwner = owner;
        }

        synchronized void destruct() {
            if (mNativePointer != 0) {
                deleteNative(mNativePointer);
                mNativePointer = 0;
            }
        }

        static native void deleteNative(long pointer);
    }
}
