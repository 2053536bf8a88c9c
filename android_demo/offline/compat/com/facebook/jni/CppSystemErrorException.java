package com.facebook.jni;

/** Offline-build stand-in for fbjni's CppSystemErrorException. */
public class CppSystemErrorException extends CppException {
    private final int errorCode;

    public CppSystemErrorException(String message, int errorCode) {
        super(message);
        this.errorCode = errorCode;
    }

    public int getErrorCode() {
        return errorCode;
    }
}
